//! The user's own sign-in security: enrol an authenticator (forced at the
//! first sign-in of an account that must have one, or self-service from the
//! Security page), and recovery codes.
//!
//! The QR code is drawn by the server as inline SVG (no external service
//! sees the secret). A new secret takes effect only once the user proves it
//! with a code from the app; until then it lives in the session alone. An
//! enrolment issues ten recovery codes, shown once and stored hashed.
//! Replacing the authenticator ends the account's other sessions.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use super::i18n::Lang;
use super::login::{self, NextQuery};
use super::pages::{self, bare_page, fill, page};
use super::reauth::{self, Proof};
use super::redirect::local_target;
use super::{check_csrf, Shared, Viewer, Visitor};
use crate::accounts::{self, recovery, totp};

#[derive(Deserialize)]
pub struct ProvenForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    proof: Proof,
}

/// The otpauth:// URI as an SVG QR code.
fn qr_svg(uri: &str) -> Markup {
    let svg = qrcode::QrCode::new(uri.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(220, 220)
                .build()
        })
        .unwrap_or_default();
    // The SVG is generated here from our own data, not from input.
    html! { div.qr role="img" aria-label="QR code" { (PreEscaped(svg)) } }
}

/// What an enrolment page shows and where its form goes.
struct Enrolment<'a> {
    account: &'a str,
    secret: &'a str,
    csrf: &'a str,
    action: &'a str,
    next: &'a str,
    /// At sign-in, because the account must have TOTP.
    required: bool,
}

fn enrol_markup(lang: Lang, e: &Enrolment, error: Option<&str>) -> Markup {
    let Enrolment {
        account,
        secret,
        csrf,
        action,
        next,
        required,
    } = *e;
    let uri = totp::totp_for(secret, account)
        .map(|t| t.get_url())
        .unwrap_or_default();
    html! {
        section.card.enrol {
            h1 { (lang.t("enrol.title")) }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            @if required { p.notice { (lang.t("enrol.required")) } }
            p { (lang.t("enrol.scan")) }
            (qr_svg(&uri))
            p { a.otpauth href=(uri) { (lang.t("enrol.open_app")) } }
            p { (lang.t("enrol.key")) ": " code.secret { (secret) } }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label { (lang.t("totp.code"))
                    input type="text" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]{6,7}" required autofocus;
                }
                button type="submit" { (lang.t("totp.submit")) }
            }
        }
    }
}

/// The codes, once, with where to go next.
fn codes_page(lang: Lang, codes: &[String], next: &str) -> Markup {
    bare_page(
        lang,
        lang.t("recovery.title"),
        html! {
            section.card.recovery {
                h1 { (lang.t("recovery.title")) }
                p { (lang.t("recovery.explain")) }
                ol.recovery-codes { @for code in codes { li { code { (code) } } } }
                p { a.button href=(next) { (lang.t("recovery.continue")) } }
            }
        },
    )
}

/// The new secret of this enrolment: the one already shown in this
/// session, or a fresh one.
/// Does `code` come from the authenticator just set up with `secret`? A
/// wrong one counts towards the lockout and is audited.
fn code_confirms(state: &Shared, secret: &str, user: &str, ip: &str, code: &str) -> bool {
    if state.second_factor.verify(secret, user, code) {
        return true;
    }
    state.throttle.fail(user, ip);
    state.audit(
        user,
        ip,
        "web-totp-enrol-failed",
        user,
        "code does not match the new secret",
    );
    false
}

fn enrolling_secret(state: &Shared, handle: &str, current: Option<String>) -> String {
    current.unwrap_or_else(|| {
        let secret = totp::new_totp_secret();
        state.sessions.set_enrolling(handle, Some(secret.clone()));
        secret
    })
}

// ---- At sign-in: an account that must have TOTP and has none ----

pub async fn first_form(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = local_target(query.next.as_deref());
    let Some((_, session)) = login::pending(&state, &headers) else {
        return Redirect::to("/login").into_response();
    };
    let Some(account) = state.accounts.get(&session.user).filter(|a| !a.disabled) else {
        return Redirect::to("/login").into_response();
    };
    if account.totp_secret.is_some() {
        return Redirect::to(&format!("/login/totp?next={}", pages::url_encode(&next)))
            .into_response();
    }
    let secret = enrolling_secret(&state, &session.handle, session.enrolling.clone());
    let lang = visitor.lang;
    let markup = enrol_markup(
        lang,
        &Enrolment {
            account: &account.address,
            secret: &secret,
            csrf: &session.csrf,
            action: "/login/enrol",
            next: &next,
            required: true,
        },
        None,
    );
    Html(bare_page(lang, lang.t("enrol.title"), markup).into_string()).into_response()
}

pub async fn first_submit(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Form(form): Form<login::TotpForm>,
) -> Response {
    let lang = visitor.lang;
    let next = local_target(form.next.as_deref());
    let Some((id, session)) = login::pending(&state, &headers) else {
        return Redirect::to("/login").into_response();
    };
    if !check_csrf(&headers, &session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let user = session.user.clone();
    if let Err(blocked) = state.throttle.check(&user, &visitor.ip) {
        state.sessions.remove(&id);
        return login::blocked_response(&state, lang, &next, &user, blocked);
    }
    let Some(secret) = session.enrolling.clone() else {
        return Redirect::to("/login/enrol").into_response();
    };
    if !code_confirms(&state, &secret, &user, &visitor.ip, &form.code) {
        let markup = enrol_markup(
            lang,
            &Enrolment {
                account: &user,
                secret: &secret,
                csrf: &session.csrf,
                action: "/login/enrol",
                next: &next,
                required: true,
            },
            Some(lang.t("enrol.failed")),
        );
        return (
            StatusCode::UNAUTHORIZED,
            Html(bare_page(lang, lang.t("enrol.title"), markup).into_string()),
        )
            .into_response();
    }
    let path = state.config.users_file.clone();
    let enrolled = tokio::task::block_in_place(|| {
        let enrolled = accounts::enrol_totp(&path, &user, &secret, true);
        state
            .security
            .credentials_changed(Some((&user, &visitor.ip)));
        enrolled
    });
    state.accounts.invalidate();
    let codes = match enrolled {
        Ok((_, codes)) => codes,
        Err(err) => {
            state.sessions.remove(&id);
            state.audit(
                &user,
                &visitor.ip,
                "web-totp-enrol-failed",
                &user,
                &err.to_string(),
            );
            return (
                StatusCode::CONFLICT,
                Html(
                    bare_page(
                        lang,
                        lang.t("enrol.title"),
                        html! { p.error { (lang.t("enrol.taken")) } },
                    )
                    .into_string(),
                ),
            )
                .into_response();
        }
    };
    // The new secret ended the account's sessions (this pending one too):
    // the browser gets a fresh, full one.
    state.sessions.remove(&id);
    let full = state
        .sessions
        .create(&user, true, &visitor.ip, &visitor.user_agent);
    state.throttle.succeed(&user);
    state.audit(
        &user,
        &visitor.ip,
        "web-totp-enrolled",
        &user,
        "at first sign-in; 10 recovery codes issued",
    );
    state.audit(
        &user,
        &visitor.ip,
        "web-login",
        &user,
        "ok (password + new TOTP)",
    );
    if state.accounts.get(&user).is_some_and(|a| a.admin) {
        state.security.admin_signed_in(&user, &visitor.ip);
    }
    (
        [(header::SET_COOKIE, login::session_cookie(&state, &full))],
        Html(codes_page(lang, &codes, &next).into_string()),
    )
        .into_response()
}

// ---- Self-service, signed in ----

pub async fn security_page(State(state): State<Shared>, viewer: Viewer) -> Response {
    let lang = viewer.lang;
    let enrolled = viewer.account.totp_secret.is_some();
    let left = viewer.account.recovery_codes.len().to_string();
    let total = recovery::COUNT.to_string();
    let body = html! {
        h1 { (lang.t("account.title")) }
        section.card {
            p { @if enrolled { (lang.t("account.totp_on")) } @else { (lang.t("account.totp_off")) } }
            form method="post" action="/account/totp" {
                input type="hidden" name="csrf" value=(viewer.session.csrf);
                button type="submit" {
                    @if enrolled { (lang.t("account.totp_replace")) } @else { (lang.t("account.totp_setup")) }
                }
            }
        }
        @if enrolled {
            section.card {
                p.recovery-left { (fill(lang.t("account.recovery_left"), &[&left, &total])) }
                form method="post" action="/account/recovery-codes" {
                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                    button type="submit" data-confirm=(lang.t("admin.confirm")) { (lang.t("account.recovery_new")) }
                }
            }
        }
    };
    page(&state, &viewer, lang.t("account.title"), body)
}

/// Start (or restart) enrolling: a new secret, shown with its QR code.
pub async fn start_enrolment(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<ProvenForm>,
) -> Response {
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(viewer.lang);
    }
    if let Err(challenge) =
        reauth::require(&state, &viewer, "/account/totp", &[], &form.proof).await
    {
        return challenge;
    }
    let secret = totp::new_totp_secret();
    state
        .sessions
        .set_enrolling(&viewer.session.handle, Some(secret.clone()));
    let lang = viewer.lang;
    let markup = enrol_markup(
        lang,
        &Enrolment {
            account: &viewer.account.address,
            secret: &secret,
            csrf: &viewer.session.csrf,
            action: "/account/totp/confirm",
            next: "/account",
            required: false,
        },
        None,
    );
    page(&state, &viewer, lang.t("enrol.title"), markup)
}

pub async fn confirm_enrolment(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<login::TotpForm>,
) -> Response {
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let user = viewer.account.address.clone();
    let Some(secret) = viewer.session.enrolling.clone() else {
        return Redirect::to("/account").into_response();
    };
    if let Err(blocked) = state.throttle.check(&user, &viewer.ip) {
        // Signed in already: the lockout on a page of its own, not the login form.
        let message = html! { p.error { (login::blocked_message(lang, blocked)) } };
        let mut response = page(&state, &viewer, lang.t("enrol.title"), message);
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return response;
    }
    if !code_confirms(&state, &secret, &user, &viewer.ip, &form.code) {
        let markup = enrol_markup(
            lang,
            &Enrolment {
                account: &user,
                secret: &secret,
                csrf: &viewer.session.csrf,
                action: "/account/totp/confirm",
                next: "/account",
                required: false,
            },
            Some(lang.t("enrol.failed")),
        );
        let mut response = page(&state, &viewer, lang.t("enrol.title"), markup);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let path = state.config.users_file.clone();
    let enrolled = tokio::task::block_in_place(|| {
        let enrolled = accounts::enrol_totp(&path, &user, &secret, false);
        state
            .security
            .credentials_changed(Some((&user, &viewer.ip)));
        enrolled
    });
    state.accounts.invalidate();
    let codes = match enrolled {
        Ok((_, codes)) => codes,
        Err(err) => return pages::internal_error(lang, err),
    };
    let replaced = viewer.account.totp_secret.is_some();
    state.audit(
        &user,
        &viewer.ip,
        "web-totp-enrolled",
        &user,
        if replaced {
            "replaced; other sessions ended; 10 new recovery codes"
        } else {
            "self-service; 10 recovery codes issued"
        },
    );
    // The account's sessions ended with the new secret: this browser gets a
    // fresh one (new ID), every other one is signed out.
    state.sessions.revoke_user(&user);
    let fresh = state
        .sessions
        .create(&user, true, &viewer.ip, &viewer.session.user_agent);
    (
        [(header::SET_COOKIE, login::session_cookie(&state, &fresh))],
        Html(codes_page(lang, &codes, "/account").into_string()),
    )
        .into_response()
}

pub async fn new_recovery_codes(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<ProvenForm>,
) -> Response {
    let lang = viewer.lang;
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    if viewer.account.totp_secret.is_none() {
        return Redirect::to("/account").into_response();
    }
    if let Err(challenge) =
        reauth::require(&state, &viewer, "/account/recovery-codes", &[], &form.proof).await
    {
        return challenge;
    }
    let path = state.config.users_file.clone();
    let user = viewer.account.address.clone();
    let regenerated = tokio::task::block_in_place(|| {
        let regenerated = accounts::regenerate_recovery_codes(&path, &user);
        state
            .security
            .credentials_changed(Some((&user, &viewer.ip)));
        regenerated
    });
    state.accounts.invalidate();
    match regenerated {
        Ok((_, codes)) => {
            state.audit(
                &user,
                &viewer.ip,
                "web-recovery-codes",
                &user,
                "10 new codes; the old ones no longer work",
            );
            Html(codes_page(lang, &codes, "/account").into_string()).into_response()
        }
        Err(err) => pages::internal_error(lang, err),
    }
}
