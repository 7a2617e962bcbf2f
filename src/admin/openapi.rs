//! The OpenAPI 3.1 document for the admin API, built from [`super::ROUTES`] and the
//! authorization matrix, so the roles it lists are the roles the code enforces.

use super::ROUTES;
use super::authz::{AdminRole, MATRIX, Reach};
use axum::Json;
use serde_json::{Map, Value, json};

/// Roles allowed for an action, with their reach, e.g. `org_admin (own organisation)`.
fn roles_for(action: super::authz::Action) -> Vec<String> {
    let roles = [AdminRole::OrgAdmin, AdminRole::TeamAdmin, AdminRole::TeamMember, AdminRole::PlatformOperator];
    let Some((_, row)) = MATRIX.iter().find(|(a, _)| *a == action) else { return vec![] };
    roles
        .iter()
        .zip(row.iter())
        .filter_map(|(role, reach)| match reach {
            Reach::No => None,
            Reach::Any => Some(format!("{} (any)", role.as_str())),
            Reach::OwnOrg => Some(format!("{} (own organisation)", role.as_str())),
            Reach::OwnClinic => Some(format!("{} (own clinics)", role.as_str())),
            Reach::OwnRequests => Some(format!("{} (own clinics, what they requested)", role.as_str())),
        })
        .collect()
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method, r.path.trim_start_matches("/v1/").replace(['/', '{', '}', '-', '.'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "503": {"$ref": "#/components/responses/Error"}
            }
        });
        if let Some(action) = r.action {
            op["security"] = json!([{"platformToken": []}]);
            op["x-callpay-roles"] = json!(roles_for(action));
        }
        paths.entry(r.path).or_insert_with(|| json!({}))[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "callpay admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"platformToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Error": {"description": "An error with a stable code", "content": {"application/json": {"schema": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
            }}}}}
        }
    })
}

/// `GET /v1/openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}
