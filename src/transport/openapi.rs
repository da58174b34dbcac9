//! OpenAPI 3.1 descriptions of the HTTP bridge, generated from the live endpoint registry.
//!
//! `GET /api/openapi.json` describes every known endpoint; `GET /api/<application>/openapi.json`
//! only that application's. Each endpoint gets two paths, the way the bridge reads them:
//!
//! - `/api/<application>/<endpoint>/` (the trailing `/` means "no object id in the path"):
//!   GET is LIST (INDEX, or OPEN and DELETE with `Flow-Request-ObjectId`, via
//!   `Flow-Request-Method`), POST is CREATE (UPDATE or RUN with an object id), PUT and PATCH are
//!   UPDATE and DELETE is DELETE with the object id in a header or the query string;
//! - `/api/<application>/<endpoint>/{objectid}`: GET is OPEN (DELETE and INDEX via
//!   `Flow-Request-Method`), POST is UPDATE (RUN via `Flow-Request-Method`), PUT and PATCH are
//!   UPDATE, DELETE is DELETE.
//!
//! Every operation lists the `Flow-Request-*` headers and their query-string twins, the request
//! body where there is one, and a response per HTTP status of each error class, all with the
//! one envelope (`components/schemas`). The error codes come from [`ErrorCode::ALL`], the
//! condition operators from [`Operator::ALL`], the methods from [`Method::ALL`], so the
//! document cannot drift from the code. Basic credentials and `Flow-Auth-Token` are declared
//! as security schemes; the document marks them optional while the hub does not enforce them.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::dispatch::EndpointInfo;
use crate::protocol::{ErrorCode, Method};
use crate::query::Operator;

/// The media type of MessagePack bodies and replies (`Accept: application/msgpack`).
const MSGPACK: &str = "application/msgpack";

/// The OpenAPI document for `endpoints`: all of them, or only those of `application`.
pub fn document(endpoints: &[EndpointInfo], application: Option<&str>) -> Value {
    let mut paths = Map::new();
    let mut tags = Vec::new();
    for e in endpoints
        .iter()
        .filter(|e| application.is_none_or(|a| a == e.application))
    {
        let (collection, item) = endpoint_paths(e);
        paths.insert(
            format!("/api/{}/{}/", e.application, e.endpoint),
            collection,
        );
        paths.insert(
            format!("/api/{}/{}/{{objectid}}", e.application, e.endpoint),
            item,
        );
        tags.push(json!({
            "name": e.endpoint,
            "description": format!(
                "Endpoint `{}` of application `{}` ({}).",
                e.endpoint,
                e.application,
                kind_name(e)
            ),
        }));
    }
    let title = match application {
        Some(a) => format!("flowhub: application {a}"),
        None => "flowhub: all applications".to_string(),
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The Flow API over HTTP: LIST, OPEN, UPDATE, DELETE, INDEX, CREATE and RUN on named endpoints.",
            "description": DESCRIPTION,
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "the hub that served this document"}],
        "security": security_requirements(),
        "tags": tags,
        "paths": paths,
        "components": components(),
    })
}

const DESCRIPTION: &str = "\
Every endpoint of the hub is published as `/api/<application>/<endpoint>/<objectid>`. \
A trailing `/` means that the path names no object id. Without one: if an object id came in \
`Flow-Request-ObjectId` (or the `objectid` query parameter) the whole path is the endpoint; else, \
if the whole path names a known endpoint, it is that endpoint; else the last segment is the \
object id.\n\n\
Everything of the call except the data travels in headers or in the query string; a header wins \
over its query-string twin, and header values may be wrapped in double quotes. The body is the \
data (JSON, or MessagePack with `Content-Type: application/msgpack`). The reply is the same \
envelope as over WebSocket (`status`, `success`, `data`, `count`, `dataType`, and on error \
`message`, `errorcode`, `errorid`); the HTTP status carries the error's class. \
`Accept: application/msgpack` gets the envelope in MessagePack.\n\n\
Without `Flow-Request-Method` the HTTP verb decides: GET is LIST, or OPEN when there is an \
object id; POST is CREATE, or UPDATE when there is an object id; PUT and PATCH are UPDATE; \
DELETE is DELETE.";

fn kind_name(e: &EndpointInfo) -> String {
    match serde_json::to_value(e.kind) {
        Ok(Value::String(s)) if s == "stored" => "objects stored in the hub".to_string(),
        Ok(Value::String(s)) if s == "provided" => format!(
            "served by {} provider connection(s) for {}; methods they do not serve go to the hub's store",
            e.providers,
            e.provided_methods.names().join(", ")
        ),
        Ok(Value::String(s)) => s,
        _ => "endpoint".to_string(),
    }
}

/// Any one of the schemes, or none: authentication is declared but not enforced yet.
fn security_requirements() -> Value {
    json!([{"basicAuth": []}, {"flowAuthToken": []}, {"flowAuthTokenQuery": []}, {}])
}

fn component_ref(kind: &str, name: &str) -> Value {
    json!({"$ref": format!("#/components/{kind}/{name}")})
}

/// The Flow-Request-* headers and their query-string twins, as component names.
const CALL_PARAMETERS: [&str; 10] = [
    "FlowRequestMethod",
    "method",
    "FlowRequestObjectId",
    "objectid",
    "FlowRequestNamespace",
    "namespace",
    "FlowRequestParameters",
    "parameters",
    "FlowRequestParameter",
    "parameter",
];

/// What one HTTP operation does.
struct Op {
    verb: &'static str,
    /// Short name, unique per path kind; part of the operationId.
    name: &'static str,
    /// The Flow method without `Flow-Request-Method`, then the others it can carry.
    default: Method,
    others: &'static [Method],
    summary: &'static str,
    body: Option<Body>,
    /// Whether the reply of the default method is a list (LIST).
    list: bool,
}

#[derive(Clone, Copy)]
enum Body {
    /// CREATE data; required.
    Create,
    /// An UPDATE merge patch (or RUN input); required.
    Update,
}

const COLLECTION_OPS: [Op; 5] = [
    Op {
        verb: "get",
        name: "list",
        default: Method::List,
        others: &[Method::Index, Method::Open, Method::Delete],
        summary: "LIST the endpoint's objects (sorting, filtering, pagination in the parameters)",
        body: None,
        list: true,
    },
    Op {
        verb: "post",
        name: "create",
        default: Method::Create,
        others: &[Method::Update, Method::Run],
        summary: "CREATE an object (the id is the data's `id`, the object id given, or a new UUID)",
        body: Some(Body::Create),
        list: false,
    },
    Op {
        verb: "put",
        name: "update-by-id-field",
        default: Method::Update,
        others: &[],
        summary: "UPDATE the object named by Flow-Request-ObjectId (a JSON merge patch)",
        body: Some(Body::Update),
        list: false,
    },
    Op {
        verb: "patch",
        name: "patch-by-id-field",
        default: Method::Update,
        others: &[],
        summary: "UPDATE the object named by Flow-Request-ObjectId (a JSON merge patch)",
        body: Some(Body::Update),
        list: false,
    },
    Op {
        verb: "delete",
        name: "delete-by-id-field",
        default: Method::Delete,
        others: &[],
        summary: "DELETE the object named by Flow-Request-ObjectId",
        body: None,
        list: false,
    },
];

const ITEM_OPS: [Op; 5] = [
    Op {
        verb: "get",
        name: "open",
        default: Method::Open,
        others: &[Method::Index, Method::Delete],
        summary: "OPEN an object",
        body: None,
        list: false,
    },
    Op {
        verb: "post",
        name: "update",
        default: Method::Update,
        others: &[Method::Run, Method::Create],
        summary: "UPDATE an object (a JSON merge patch: `null` removes a field)",
        body: Some(Body::Update),
        list: false,
    },
    Op {
        verb: "put",
        name: "put",
        default: Method::Update,
        others: &[],
        summary: "UPDATE an object (a JSON merge patch)",
        body: Some(Body::Update),
        list: false,
    },
    Op {
        verb: "patch",
        name: "patch",
        default: Method::Update,
        others: &[],
        summary: "UPDATE an object (a JSON merge patch)",
        body: Some(Body::Update),
        list: false,
    },
    Op {
        verb: "delete",
        name: "delete",
        default: Method::Delete,
        others: &[],
        summary: "DELETE an object",
        body: None,
        list: false,
    },
];

/// The path items of one endpoint: without and with an object id in the path.
fn endpoint_paths(e: &EndpointInfo) -> (Value, Value) {
    let collection = path_item(e, &COLLECTION_OPS, false);
    let item = path_item(e, &ITEM_OPS, true);
    (collection, item)
}

fn path_item(e: &EndpointInfo, ops: &[Op], with_id: bool) -> Value {
    let mut item = Map::new();
    item.insert(
        "summary".into(),
        Value::String(if with_id {
            format!("One object of {}", e.endpoint)
        } else {
            format!("Endpoint {}", e.endpoint)
        }),
    );
    let mut parameters: Vec<Value> = Vec::new();
    if with_id {
        parameters.push(component_ref("parameters", "objectidPath"));
    }
    parameters.extend(
        CALL_PARAMETERS
            .iter()
            .filter(|p| !with_id || !matches!(**p, "FlowRequestObjectId" | "objectid"))
            .map(|p| component_ref("parameters", p)),
    );
    item.insert("parameters".into(), Value::Array(parameters));
    item.insert("x-flow-endpoint".into(), Value::String(e.endpoint.clone()));
    item.insert(
        "x-flow-application".into(),
        Value::String(e.application.clone()),
    );
    for op in ops {
        item.insert(op.verb.into(), operation(e, op, with_id));
    }
    Value::Object(item)
}

fn operation(e: &EndpointInfo, op: &Op, with_id: bool) -> Value {
    let methods: Vec<&str> = std::iter::once(op.default)
        .chain(op.others.iter().copied())
        .map(Method::as_str)
        .collect();
    let mut description = format!(
        "Flow method {} without `Flow-Request-Method`",
        op.default.as_str()
    );
    if !op.others.is_empty() {
        description.push_str(&format!(
            "; {} with it",
            op.others
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    description.push('.');
    if !with_id && op.default.needs_objectid() {
        description.push_str(" The object id comes in `Flow-Request-ObjectId` or `objectid`.");
    }
    let mut o = Map::new();
    o.insert("tags".into(), json!([e.endpoint]));
    o.insert("summary".into(), Value::String(op.summary.to_string()));
    o.insert("description".into(), Value::String(description));
    o.insert(
        "operationId".into(),
        Value::String(format!("{}:{}", op.name, e.endpoint)),
    );
    o.insert("x-flow-methods".into(), json!(methods));
    if let Some(body) = op.body {
        o.insert(
            "requestBody".into(),
            component_ref(
                "requestBodies",
                match body {
                    Body::Create => "CreateData",
                    Body::Update => "UpdateData",
                },
            ),
        );
    }
    let mut responses = Map::new();
    // `Flow-Request-Method` may choose LIST on any operation, and any other method on the
    // LIST operation, so every operation's success is either envelope.
    let ok = if op.list {
        "ListResult"
    } else {
        "ObjectResult"
    };
    responses.insert("200".into(), component_ref("responses", ok));
    for status in error_classes().into_keys() {
        responses.insert(
            status.to_string(),
            component_ref("responses", &format!("Error{status}")),
        );
    }
    o.insert("responses".into(), Value::Object(responses));
    Value::Object(o)
}

/// The error codes grouped by the HTTP status of their class, in status order.
fn error_classes() -> BTreeMap<u16, Vec<ErrorCode>> {
    let mut classes: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in ErrorCode::ALL {
        classes.entry(code.http_status()).or_default().push(code);
    }
    classes
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Both encodings of a reply or a body with the same schema.
fn content(schema: Value) -> Value {
    json!({
        "application/json": {"schema": schema.clone()},
        MSGPACK: {"schema": schema},
    })
}

fn components() -> Value {
    let mut responses = Map::new();
    // Both are either envelope (`Flow-Request-Method` chooses the method); they differ in
    // which one the operation gives without it.
    let either = json!({"anyOf": [
        component_ref("schemas", "ListEnvelope"),
        component_ref("schemas", "ObjectEnvelope"),
    ]});
    responses.insert(
        "ListResult".into(),
        json!({
            "description": "LIST (without Flow-Request-Method): the matching objects (one page of them) and `count`, the number of matches before pagination. Another method given in Flow-Request-Method: its object, as in ObjectResult.",
            "content": content(either.clone()),
        }),
    );
    responses.insert(
        "ObjectResult".into(),
        json!({
            "description": "The envelope with the object in `data` (INDEX: its search information; DELETE: its last version). LIST given in Flow-Request-Method: the list, as in ListResult.",
            "content": content(either),
        }),
    );
    for (status, codes) in error_classes() {
        let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        responses.insert(
            format!("Error{status}"),
            json!({
                "description": format!("{}: {}", status_text(status), names.join(", ")),
                "content": content(json!({
                    "allOf": [
                        component_ref("schemas", "ErrorEnvelope"),
                        {"properties": {"errorcode": {"enum": names}}},
                    ],
                })),
            }),
        );
    }

    let mut parameters = Map::new();
    let header_and_query = [
        (
            "FlowRequestMethod",
            "Flow-Request-Method",
            "method",
            method_schema(),
            "The Flow method; without it the HTTP verb decides. Case does not matter.",
        ),
        (
            "FlowRequestObjectId",
            "Flow-Request-ObjectId",
            "objectid",
            objectid_schema(0),
            "The object id; when given, a path without a trailing `/` is all endpoint. Empty: none.",
        ),
        (
            "FlowRequestNamespace",
            "Flow-Request-Namespace",
            "namespace",
            json!({"type": "string", "maxLength": 128, "pattern": NO_CONTROL}),
            "The tenant partition; objects of one namespace are invisible in another. Empty: the default namespace.",
        ),
        (
            "FlowRequestParameters",
            "Flow-Request-Parameters",
            "parameters",
            parameters_text_schema(),
            "Parameters as a JSON object (with or without the outer `\"parameters\"` wrapper) or as key-value pairs (`sorting=true&sorting.by=streetNumber`).",
        ),
        (
            "FlowRequestParameter",
            "Flow-Request-Parameter",
            "parameter",
            parameters_text_schema(),
            "The same as Flow-Request-Parameters (the seed's examples use this name); both may be given and are merged.",
        ),
    ];
    for (name, header, query, schema, description) in header_and_query {
        parameters.insert(
            name.into(),
            json!({
                "name": header,
                "in": "header",
                "required": false,
                "description": format!("{description} May be wrapped in double quotes. Wins over the `{query}` query parameter."),
                "schema": schema.clone(),
            }),
        );
        parameters.insert(
            query.into(),
            json!({
                "name": query,
                "in": "query",
                "required": false,
                "description": format!("{description} Used when the `{header}` header is absent."),
                "schema": schema,
            }),
        );
    }
    parameters.insert(
        "objectidPath".into(),
        json!({
            "name": "objectid",
            "in": "path",
            "required": true,
            "description": "The object id (the last segment of a path without a trailing `/`).",
            "schema": objectid_schema(1),
        }),
    );

    let data_schema = component_ref("schemas", "ObjectData");
    json!({
        "schemas": schemas(),
        "responses": responses,
        "parameters": parameters,
        "requestBodies": {
            "CreateData": {
                "description": "The new object's fields. `id` may be given (else the hub makes a UUID v4); `created`, `updated` and `version` are the hub's.",
                "required": true,
                "content": content(data_schema.clone()),
            },
            "UpdateData": {
                "description": "UPDATE: a JSON merge patch (RFC 7386; `null` removes a field; a `version` field or parameter is the expected version, else CONFLICT). RUN: the input.",
                "required": true,
                "content": content(data_schema),
            },
        },
        "securitySchemes": {
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": "`Authorization: Basic base64(username:password)`.",
            },
            "flowAuthToken": {
                "type": "apiKey",
                "in": "header",
                "name": "Flow-Auth-Token",
                "description": "A token from the authentication engine (CREATE on `auth/token`).",
            },
            "flowAuthTokenQuery": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "The same token in the query string; the header wins.",
            },
        },
    })
}

/// Text without control characters (C0, DEL, C1), as namespaces and object ids must be.
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// An object id: at most 200 bytes, no `/`, no control characters.
fn objectid_schema(min: usize) -> Value {
    json!({
        "type": "string",
        "minLength": min,
        "maxLength": 200,
        "pattern": "^[^/\\u0000-\\u001F\\u007F-\\u009F]*$",
    })
}

fn method_schema() -> Value {
    let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
    json!({"type": "string", "enum": names})
}

fn parameters_text_schema() -> Value {
    json!({
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": component_ref("schemas", "Parameters"),
        "examples": [
            "{\"parameters\": {\"sorting\": true, \"sorting.by\": \"streetNumber\", \"sorting.order\": \"ASC\"}}",
            "sorting=true&sorting.by=streetNumber",
        ],
    })
}

fn schemas() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let code_statuses: Map<String, Value> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), json!(c.http_status())))
        .collect();
    let operators: Vec<&str> = Operator::ALL.iter().map(|o| o.as_str()).collect();
    let sort_keys = json!({"oneOf": [
        {"type": "string", "description": "a field path, or several separated by commas"},
        {"type": "array", "items": {"type": "string"}},
    ]});
    let orders = json!({"oneOf": [
        {"type": "string", "enum": ["ASC", "DESC", "asc", "desc"]},
        {"type": "array", "items": {"type": "string", "enum": ["ASC", "DESC", "asc", "desc"]}},
    ]});
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "Envelope": {
            "description": "Every reply: success or error.",
            "oneOf": [
                component_ref("schemas", "SuccessEnvelope"),
                component_ref("schemas", "ErrorEnvelope"),
            ],
        },
        "SuccessEnvelope": {
            "type": "object",
            "required": ["status", "success", "dataType"],
            "properties": {
                "status": {"const": 0},
                "success": {"const": true},
                "data": {"description": "the result"},
                "count": {"type": "integer", "minimum": 0, "description": "LIST: the number of matches before pagination"},
                "dataType": {"const": "JSON"},
            },
        },
        "ListEnvelope": {
            "allOf": [
                component_ref("schemas", "SuccessEnvelope"),
                {
                    "required": ["data", "count"],
                    "properties": {
                        "data": {"type": "array", "items": component_ref("schemas", "StoredObject")},
                    },
                },
            ],
        },
        "ObjectEnvelope": {
            "allOf": [
                component_ref("schemas", "SuccessEnvelope"),
                {"required": ["data"], "properties": {"data": {"type": "object"}}},
            ],
        },
        "ErrorEnvelope": {
            "type": "object",
            "required": ["status", "success", "message", "errorcode", "dataType", "errorid"],
            "properties": {
                "status": {"const": 0},
                "success": {"const": false},
                "message": {"type": "string"},
                "errorcode": component_ref("schemas", "ErrorCode"),
                "dataType": {"const": "JSON"},
                "errorid": {"type": "string", "format": "uuid", "description": "also in the hub's log line for this error"},
            },
        },
        "ErrorCode": {
            "type": "string",
            "enum": codes,
            "description": "The fixed catalogue of error codes; `x-http-status` gives the HTTP status of each.",
            "x-http-status": code_statuses,
        },
        "ObjectData": {
            "type": "object",
            "additionalProperties": true,
        },
        "StoredObject": {
            "type": "object",
            "required": ["id", "created", "updated", "version"],
            "properties": {
                "id": {"type": "string"},
                "created": {"type": "string", "format": "date-time"},
                "updated": {"type": "string", "format": "date-time"},
                "version": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": true,
        },
        "Parameters": {
            "description": "LIST parameters, flat (`sorting.by`), wrapped in `{\"parameters\": ...}`, or grouped (`{\"sorting\": {\"by\": ...}}`).",
            "type": "object",
            "properties": {
                "parameters": {"type": "object"},
                "sorting": {"type": "boolean"},
                "sorting.by": sort_keys,
                "sorting.order": orders,
                "condition": {"type": "boolean"},
                "condition.values": component_ref("schemas", "ConditionGroup"),
                "pagination": {"type": "boolean"},
                "pagination.size": count.clone(),
                "pagination.from": count,
                "version": {"type": "integer", "minimum": 0, "description": "UPDATE, DELETE: the expected version"},
            },
        },
        "ConditionGroup": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": component_ref("schemas", "ConditionItem")},
                "subgroups": {"type": "array", "items": component_ref("schemas", "ConditionGroup")},
                "logic": {"type": "string", "enum": ["AND", "OR"]},
            },
        },
        "ConditionItem": {
            "type": "object",
            "required": ["key", "operator"],
            "properties": {
                "key": {"type": "string", "description": "a field path (`city`, `address.city`, `segment.0`)"},
                "operator": {"type": "string", "enum": operators},
                "value": {},
            },
        },
    })
}
