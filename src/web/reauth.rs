//! "Confirm it's you": the password or a current one-time code again before
//! an action that cannot be undone or that changes an account (delete or
//! bounce mail, revoke a session, enrol an authenticator, new recovery
//! codes).
//!
//! A stolen session cookie alone is then not enough to do lasting harm. A
//! sign-in counts as a confirmation; either lasts `[web] reauth_window`.
//! The challenge re-posts the original form to the same address with the
//! proof added, so the action happens right after the confirmation and
//! nothing is lost (no redirect of a POST through another URL).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::pages::bare_page;
use super::session::Blocked;
use super::{Shared, Viewer};
use crate::accounts;

/// The proof fields a re-posted form may carry.
#[derive(Debug, Default, Deserialize)]
pub struct Proof {
    #[serde(default)]
    reauth_password: String,
    #[serde(default)]
    reauth_code: String,
}

impl Proof {
    fn is_empty(&self) -> bool {
        self.reauth_password.is_empty() && self.reauth_code.trim().is_empty()
    }
}

/// Ok when the session is confirmed (or `proof` confirms it now); otherwise
/// the answer to send: the challenge, re-posting `carry` to `action`.
pub async fn require(
    state: &Shared,
    viewer: &Viewer,
    action: &str,
    carry: &[(&str, &str)],
    proof: &Proof,
) -> Result<(), Response> {
    if crate::envelope::now_ms() < viewer.session.confirmed_until_ms {
        return Ok(());
    }
    if proof.is_empty() {
        return Err(challenge(
            viewer,
            action,
            carry,
            StatusCode::FORBIDDEN,
            None,
        ));
    }
    let user = viewer.account.address.clone();
    if let Err(blocked) = state.throttle.check(&user, &viewer.ip) {
        state.audit(&user, &viewer.ip, "web-reauth-blocked", &user, "locked");
        let minutes = match blocked {
            Blocked::Account { minutes } | Blocked::Address { minutes } => minutes,
        };
        let message = super::pages::fill(viewer.lang.t("login.locked"), &[&minutes.to_string()]);
        return Err(challenge(
            viewer,
            action,
            carry,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&message),
        ));
    }
    let by_code = !proof.reauth_code.trim().is_empty();
    let valid = if by_code {
        viewer.account.totp_secret.as_deref().is_some_and(|secret| {
            state
                .second_factor
                .verify(secret, &user, &proof.reauth_code)
        })
    } else {
        let hash = viewer.account.password_hash.clone();
        let password = proof.reauth_password.clone();
        tokio::task::spawn_blocking(move || accounts::verify_password(&password, &hash))
            .await
            .unwrap_or(false)
    };
    let what = if by_code { "one-time code" } else { "password" };
    if valid {
        state.throttle.succeed(&user);
        state.sessions.confirm(&viewer.session.handle);
        state.audit(
            &user,
            &viewer.ip,
            "web-reauth",
            action,
            &format!("ok ({what})"),
        );
        return Ok(());
    }
    let (account_locked, address_locked) = state.throttle.fail(&user, &viewer.ip);
    state.audit(
        &user,
        &viewer.ip,
        "web-reauth-failed",
        action,
        &format!("wrong {what}"),
    );
    let locked = match (account_locked, address_locked) {
        (true, _) => Some("account"),
        (false, true) => Some("address"),
        _ => None,
    };
    state.security.sign_in_failed(&user, &viewer.ip, locked);
    if locked.is_some() {
        // Someone holding this session keeps guessing: end it.
        state.sessions.revoke(&viewer.session.handle);
    }
    Err(challenge(
        viewer,
        action,
        carry,
        StatusCode::UNAUTHORIZED,
        Some(viewer.lang.t("reauth.failed")),
    ))
}

fn challenge(
    viewer: &Viewer,
    action: &str,
    carry: &[(&str, &str)],
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let lang = viewer.lang;
    let has_code = viewer.account.totp_secret.is_some();
    let body = html! {
        section.card.login.reauth {
            h1 { (lang.t("reauth.title")) }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            p { (lang.t("reauth.explain")) }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(viewer.session.csrf);
                @for (name, value) in carry { input type="hidden" name=(name) value=(value); }
                label { (lang.t("login.password"))
                    input type="password" name="reauth_password" autocomplete="current-password" autofocus;
                }
                @if has_code {
                    label { (lang.t("totp.code"))
                        input type="text" name="reauth_code" inputmode="numeric" autocomplete="one-time-code";
                    }
                }
                button type="submit" { (lang.t("reauth.submit")) }
            }
        }
    };
    (
        status,
        Html(bare_page(lang, lang.t("reauth.title"), body).into_string()),
    )
        .into_response()
}
