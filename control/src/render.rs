//! Answers in the API family's two formats: JSON (default) and XML (`Format=XML`).
//!
//! XML follows the family's layout: the root is `<{Action}Response>`, an object member is an
//! element, and a list member `"Share": [a, b]` becomes repeated `<Share>` elements inside
//! their parent (`<Shares><Share>…</Share><Share>…</Share></Shares>`).

use serde_json::Value;

use super::error::ApiError;
use super::http_server::Response;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `Format` parameter: absent = JSON; `JSON`/`XML` in any case; anything else is refused.
    pub fn from_param(value: Option<&str>) -> Option<Format> {
        match value.map(str::trim) {
            None | Some("") => Some(Format::Json),
            Some(v) if v.eq_ignore_ascii_case("json") => Some(Format::Json),
            Some(v) if v.eq_ignore_ascii_case("xml") => Some(Format::Xml),
            Some(_) => None,
        }
    }
}

/// A success answer: `fields` plus `RequestId`, `Code` 200, `Message`, `Success`.
pub fn success(format: Format, action: &str, request_id: &str, fields: Value) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("RequestId".into(), Value::from(request_id));
    body.insert("Code".into(), Value::from("200"));
    body.insert("Message".into(), Value::from("successful"));
    body.insert("Success".into(), Value::from(true));
    if let Value::Object(extra) = fields {
        body.extend(extra);
    }
    render(
        format,
        200,
        &format!("{action}Response"),
        &Value::Object(body),
    )
}

/// An error answer: `RequestId`, `HostId`, `Code`, `Message` (XML root `<Error>`).
pub fn error(format: Format, request_id: &str, host_id: &str, e: &ApiError) -> Response {
    let body = serde_json::json!({
        "RequestId": request_id,
        "HostId": host_id,
        "Code": e.code,
        "Message": e.message,
    });
    render(format, e.status, "Error", &body)
}

fn render(format: Format, status: u16, root: &str, body: &Value) -> Response {
    match format {
        Format::Json => Response::json(status, body.to_string()),
        Format::Xml => {
            let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
            write_element(&mut xml, root, body);
            Response::new(status, "text/xml;charset=utf-8", xml)
        }
    }
}

fn write_element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            for item in items {
                write_element(out, name, item);
            }
        }
        Value::Object(fields) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            for (k, v) in fields {
                write_element(out, k, v);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        Value::String(s) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&xml_text(s));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        other => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&other.to_string());
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

/// Escapes markup, and drops characters XML 1.0 cannot carry at all.
fn xml_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r') || !c.is_control())
        .collect();
    quick_xml::escape::escape(&cleaned).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_lists_repeat_their_element() {
        let body =
            serde_json::json!({"Shares": {"Share": [{"ShareName": "a<b"}, {"ShareName": "c"}]}});
        let r = success(Format::Xml, "DescribeExpressSyncShares", "RID", body);
        let text = String::from_utf8(r.body).expect("utf-8");
        assert!(
            text.starts_with(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeExpressSyncSharesResponse>"
            ),
            "{text}"
        );
        assert!(
            text.contains("<Shares><Share><ShareName>a&lt;b</ShareName></Share><Share><ShareName>c</ShareName></Share></Shares>"),
            "{text}"
        );
        assert!(
            text.contains("<Success>true</Success>") && text.contains("<Code>200</Code>"),
            "{text}"
        );
        assert_eq!(r.content_type, "text/xml;charset=utf-8");
    }

    #[test]
    fn errors_carry_the_family_fields() {
        let e = ApiError::express_sync_not_exist();
        let r = error(Format::Json, "RID", "host", &e);
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["Code"], "ExpressSyncNotExist");
        assert_eq!(v["RequestId"], "RID");
        let x = error(Format::Xml, "RID", "host", &e);
        assert!(
            String::from_utf8_lossy(&x.body).contains("<Error><Code>ExpressSyncNotExist</Code>")
        );
    }

    #[test]
    fn format_parameter_is_checked() {
        assert_eq!(Format::from_param(None), Some(Format::Json));
        assert_eq!(Format::from_param(Some("xml")), Some(Format::Xml));
        assert_eq!(Format::from_param(Some("yaml")), None);
    }
}
