# Multi-stage build: compile with the Rust toolchain, run on a slim Debian
# as an unprivileged user. (Not built in CI: there is no Docker engine there;
# tests/operator.rs lints it with hadolint and checks its structure.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin breakwater

FROM debian:bookworm-slim
RUN useradd --system --uid 10025 --create-home --home-dir /var/lib/breakwater breakwater
COPY --from=build /src/target/release/breakwater /usr/local/bin/breakwater
COPY config /var/lib/breakwater/config
WORKDIR /var/lib/breakwater
USER 10025
ENV BREAKWATER_CONFIG=/var/lib/breakwater/config/docker.toml
EXPOSE 25 8080 8025
HEALTHCHECK --interval=30s --timeout=5s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8025 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -c12 <&3 | grep -q 200"]
ENTRYPOINT ["/usr/local/bin/breakwater"]
CMD ["serve"]
