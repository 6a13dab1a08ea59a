//! Sign-in (password, then TOTP when enrolled or required) and sign-out.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::i18n::Lang;
use super::pages::{self, bare_page, fill};
use super::redirect::local_target;
use super::session::{self, Blocked, COOKIE, LOGIN_COOKIE};
use super::{check_csrf, cookie, set_cookie, Shared, Viewer, Visitor};
use crate::accounts::{self, Account};

#[derive(Deserialize)]
pub struct NextQuery {
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    address: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct TotpForm {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) csrf: String,
    pub(super) next: Option<String>,
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn login_markup(lang: Lang, token: &str, next: &str, address: &str, error: Option<&str>) -> Markup {
    bare_page(
        lang,
        lang.t("login.title"),
        html! {
            section.card.login {
                h1 { (lang.t("login.title")) }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="next" value=(next);
                    label { (lang.t("login.address"))
                        input type="email" name="address" value=(address) autocomplete="username" required autofocus;
                    }
                    label { (lang.t("login.password"))
                        input type="password" name="password" autocomplete="current-password" required;
                    }
                    button type="submit" { (lang.t("login.submit")) }
                }
                p.hint { (lang.t("login.phishing_hint")) }
            }
        },
    )
}

/// The login form with a fresh double-submit token (there is no session yet
/// to hold a CSRF token, so the cookie and the form field must match).
fn login_response(
    state: &Shared,
    lang: Lang,
    status: StatusCode,
    next: &str,
    address: &str,
    error: Option<&str>,
) -> Response {
    let token = crate::secrets::random_token();
    let cookie = set_cookie(&state.config, LOGIN_COOKIE, &token, Some(3600));
    (
        status,
        [(header::SET_COOKIE, cookie)],
        Html(login_markup(lang, &token, next, address, error).into_string()),
    )
        .into_response()
}

pub async fn form(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = local_target(query.next.as_deref());
    if super::signed_in(&state, &headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    login_response(&state, visitor.lang, StatusCode::OK, &next, "", None)
}

pub(super) fn blocked_message(lang: Lang, blocked: Blocked) -> String {
    match blocked {
        Blocked::Account { minutes } => fill(lang.t("login.locked"), &[&minutes.to_string()]),
        Blocked::Address { minutes } => fill(lang.t("login.ip_blocked"), &[&minutes.to_string()]),
    }
}

/// The login form saying the account or address is locked out.
pub(super) fn blocked_response(
    state: &Shared,
    lang: Lang,
    next: &str,
    user: &str,
    blocked: Blocked,
) -> Response {
    let message = blocked_message(lang, blocked);
    login_response(
        state,
        lang,
        StatusCode::TOO_MANY_REQUESTS,
        next,
        user,
        Some(&message),
    )
}

/// The answer to a wrong address or password (and to an admin's right one
/// from outside `[web] admin_networks`: the same, on purpose).
fn wrong_password(state: &Shared, lang: Lang, next: &str, address: &str) -> Response {
    login_response(
        state,
        lang,
        StatusCode::UNAUTHORIZED,
        next,
        address,
        Some(lang.t("login.failed")),
    )
}

/// What a failure locked out, for the security event.
fn locked(account: bool, address: bool) -> Option<&'static str> {
    match (account, address) {
        (true, _) => Some("account"),
        (false, true) => Some("address"),
        _ => None,
    }
}

fn needs_totp(state: &Shared, account: &Account) -> bool {
    account.admin || state.config.require_totp || account.totp_secret.is_some()
}

pub(super) fn session_cookie(state: &Shared, id: &str) -> axum::http::HeaderValue {
    set_cookie(&state.config, COOKIE, id, None)
}

pub async fn submit(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = visitor.lang;
    let next = local_target(form.next.as_deref());
    let address = form.address.trim().to_lowercase();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !check_csrf(&headers, expected, &form.csrf) {
        let message = lang.t("login.expired");
        return login_response(
            &state,
            lang,
            StatusCode::FORBIDDEN,
            &next,
            &address,
            Some(message),
        );
    }
    if let Err(blocked) = state.throttle.check(&address, &visitor.ip) {
        state.audit(
            &address,
            &visitor.ip,
            "web-login-blocked",
            &address,
            "locked",
        );
        let message = blocked_message(lang, blocked);
        return login_response(
            &state,
            lang,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            &address,
            Some(&message),
        );
    }
    let account = state.accounts.get(&address).filter(|a| !a.disabled);
    let hash = account.as_ref().map_or_else(
        || accounts::dummy_hash().to_string(),
        |a| a.password_hash.clone(),
    );
    let password = form.password;
    let valid = tokio::task::spawn_blocking(move || accounts::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(account) = account.filter(|_| valid) else {
        let (account_locked, address_locked) = state.throttle.fail(&address, &visitor.ip);
        state.audit(
            &address,
            &visitor.ip,
            "web-login-failed",
            &address,
            "bad address or password",
        );
        state.security.sign_in_failed(
            &address,
            &visitor.ip,
            locked(account_locked, address_locked),
        );
        if account_locked || address_locked {
            state.audit(
                &address,
                &visitor.ip,
                "web-lockout",
                &address,
                if account_locked { "account" } else { "address" },
            );
            tracing::warn!(user = %address, ip = %visitor.ip, "web: sign-in locked out after repeated failures");
        }
        return wrong_password(&state, lang, &next, &address);
    };
    if account.admin && !state.admin_network_allows(&visitor.ip) {
        state.audit(
            &address,
            &visitor.ip,
            "web-login-refused",
            &address,
            "admin sign-in from outside [web] admin_networks",
        );
        state.security.raise(crate::security_events::SecurityEvent {
            kind: crate::security_events::EventKind::AdminSignInRefused,
            subject: address.clone(),
            actor: address.clone(),
            ip: visitor.ip.clone(),
            detail: "the right password, from outside [web] admin_networks".into(),
        });
        // Answered like a wrong password: no oracle for a guessed one.
        return wrong_password(&state, lang, &next, &address);
    }
    if needs_totp(&state, &account) {
        let id = state
            .sessions
            .create(&account.address, false, &visitor.ip, &visitor.user_agent);
        // No authenticator yet: enrol one now, before the session is full.
        if account.totp_secret.is_none() {
            state.audit(
                &address,
                &visitor.ip,
                "web-login-enrol",
                &address,
                "password ok; TOTP required and not enrolled: enrolment started",
            );
            let target = format!("/login/enrol?next={}", pages::url_encode(&next));
            return (
                [(header::SET_COOKIE, session_cookie(&state, &id))],
                Redirect::to(&target),
            )
                .into_response();
        }
        let target = format!("/login/totp?next={}", pages::url_encode(&next));
        return (
            [(header::SET_COOKIE, session_cookie(&state, &id))],
            Redirect::to(&target),
        )
            .into_response();
    }
    state.throttle.succeed(&address);
    state.audit(&address, &visitor.ip, "web-login", &address, "ok");
    if account.admin {
        state.security.admin_signed_in(&address, &visitor.ip);
    }
    let id = state
        .sessions
        .create(&account.address, true, &visitor.ip, &visitor.user_agent);
    (
        [(header::SET_COOKIE, session_cookie(&state, &id))],
        Redirect::to(&next),
    )
        .into_response()
}

fn totp_markup(lang: Lang, csrf: &str, next: &str, error: Option<&str>) -> Markup {
    bare_page(
        lang,
        lang.t("totp.title"),
        html! {
            section.card.login {
                h1 { (lang.t("totp.title")) }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                p { (lang.t("totp.prompt")) }
                form method="post" action="/login/totp" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label { (lang.t("totp.code"))
                        input type="text" name="code" autocomplete="one-time-code" maxlength="24" required autofocus;
                    }
                    button type="submit" { (lang.t("totp.submit")) }
                }
                p.hint { (lang.t("totp.recovery_hint")) }
            }
        },
    )
}

pub(super) fn pending(state: &Shared, headers: &HeaderMap) -> Option<(String, session::Session)> {
    let id = cookie(headers, COOKIE)?;
    let session = state.sessions.touch(id).filter(|s| !s.full)?;
    Some((id.to_string(), session))
}

pub async fn totp_form(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = local_target(query.next.as_deref());
    let Some((_, session)) = pending(&state, &headers) else {
        return Redirect::to("/login").into_response();
    };
    Html(totp_markup(visitor.lang, &session.csrf, &next, None).into_string()).into_response()
}

pub async fn totp_submit(
    State(state): State<Shared>,
    visitor: Visitor,
    headers: HeaderMap,
    Form(form): Form<TotpForm>,
) -> Response {
    let lang = visitor.lang;
    let next = local_target(form.next.as_deref());
    let Some((id, session)) = pending(&state, &headers) else {
        return Redirect::to("/login").into_response();
    };
    if !check_csrf(&headers, &session.csrf, &form.csrf) {
        return pages::csrf_error(lang);
    }
    let user = session.user.clone();
    if let Err(blocked) = state.throttle.check(&user, &visitor.ip) {
        state.sessions.remove(&id);
        state.audit(&user, &visitor.ip, "web-login-blocked", &user, "locked");
        let message = blocked_message(lang, blocked);
        return login_response(
            &state,
            lang,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            &user,
            Some(&message),
        );
    }
    let secret = state
        .accounts
        .get(&user)
        .filter(|a| !a.disabled)
        .and_then(|a| a.totp_secret);
    // A recovery code instead of the app's code: spent at once (the users
    // file is the truth, so a code cannot be used twice even by two
    // browsers racing).
    let by_recovery = crate::accounts::recovery::looks_like_one(&form.code);
    let valid = match &secret {
        None => false,
        Some(_) if by_recovery => {
            let path = state.config.users_file.clone();
            let used = tokio::task::block_in_place(|| {
                let used = accounts::use_recovery_code(&path, &user, &form.code);
                if matches!(used, Ok(true)) {
                    state
                        .security
                        .credentials_changed(Some((&user, &visitor.ip)));
                }
                used
            });
            state.accounts.invalidate();
            used.unwrap_or_else(|err| {
                tracing::error!(error = %err, "web: cannot spend a recovery code");
                false
            })
        }
        Some(s) => state.second_factor.verify(s, &user, &form.code),
    };
    if !valid {
        let (account_locked, address_locked) = state.throttle.fail(&user, &visitor.ip);
        state.audit(
            &user,
            &visitor.ip,
            "web-login-failed",
            &user,
            if by_recovery {
                "bad recovery code"
            } else {
                "bad TOTP code"
            },
        );
        state
            .security
            .sign_in_failed(&user, &visitor.ip, locked(account_locked, address_locked));
        if account_locked || address_locked {
            state.sessions.remove(&id);
            state.audit(
                &user,
                &visitor.ip,
                "web-lockout",
                &user,
                if account_locked { "account" } else { "address" },
            );
        }
        return (
            StatusCode::UNAUTHORIZED,
            Html(
                totp_markup(lang, &session.csrf, &next, Some(lang.t("totp.failed"))).into_string(),
            ),
        )
            .into_response();
    }
    let Some(full) = state.sessions.upgrade(&id) else {
        return Redirect::to("/login").into_response();
    };
    state.throttle.succeed(&user);
    state.audit(
        &user,
        &visitor.ip,
        "web-login",
        &user,
        if by_recovery {
            "ok (password + recovery code)"
        } else {
            "ok (password + TOTP)"
        },
    );
    if state.accounts.get(&user).is_some_and(|a| a.admin) {
        state.security.admin_signed_in(&user, &visitor.ip);
    }
    (
        [(header::SET_COOKIE, session_cookie(&state, &full))],
        Redirect::to(&next),
    )
        .into_response()
}

pub async fn logout(
    State(state): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !check_csrf(&headers, &viewer.session.csrf, &form.csrf) {
        return pages::csrf_error(viewer.lang);
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        state.sessions.remove(id);
    }
    state.audit(
        &viewer.account.address,
        &viewer.ip,
        "web-logout",
        &viewer.account.address,
        "ok",
    );
    (
        [(
            header::SET_COOKIE,
            set_cookie(&state.config, COOKIE, "", Some(0)),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}
