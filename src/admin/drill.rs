//! Drill endpoints: start, status, finish, list, show (see `drill`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{AdminState, ApiError, Caller};
use crate::drill::{self, StartRequest};

pub async fn start(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let request: StartRequest = match body {
        Some(Json(value)) => {
            serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        None => StartRequest::default(),
    };
    let drill = state
        .drills
        .start(&caller.name, &caller.ip, request)
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
    Ok(Json(
        serde_json::to_value(drill).map_err(ApiError::internal)?,
    ))
}

pub async fn status(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let status = state.drills.status().await.map_err(ApiError::not_found)?;
    Ok(Json(
        serde_json::to_value(status).map_err(ApiError::internal)?,
    ))
}

pub async fn finish(
    State(state): State<Arc<AdminState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let drill = state
        .drills
        .finish(&caller.name, &caller.ip)
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
    Ok(Json(
        serde_json::to_value(drill).map_err(ApiError::internal)?,
    ))
}

pub async fn list(State(state): State<Arc<AdminState>>, _caller: Caller) -> Json<Value> {
    Json(json!({
        "current": state.drills.current(),
        "reports": state.drills.list(),
    }))
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let drill = state
        .drills
        .report(&id)
        .ok_or_else(|| ApiError::not_found(format!("no drill report {id:?}")))?;
    let markdown = drill::markdown(&drill);
    let mut value = serde_json::to_value(drill).map_err(ApiError::internal)?;
    value["markdown"] = json!(markdown);
    Ok(Json(value))
}
