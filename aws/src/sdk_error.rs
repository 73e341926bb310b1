//! aws-sdk errors as one line for logs and failure reports.
//!
//! The SDK's own `DisplayErrorContext` ends with the error's debug form, which holds the raw
//! HTTP response: its headers and body. S3's `SignatureDoesNotMatch` body echoes the access key
//! id and the string to sign, so that form must never reach a log or a report in S3.

use std::error::Error;

use aws_sdk_dynamodb::error::SdkError;

/// `error` as one line: its chain of causes (each once) and, when there was a response, its
/// HTTP status; never the response's headers or body.
pub fn describe<E: Error + 'static>(error: &SdkError<E>) -> String {
    let mut line = causes(error);
    if let Some(response) = error.raw_response() {
        line.push_str(&format!(" (HTTP {})", response.status().as_u16()));
    }
    line
}

/// Any error (an SDK waiter's, say) as its chain of causes, each once, joined by `: `.
pub fn causes(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        // Causes often repeat their source's text ("X: m" then "m"); keep each once.
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";

    fn signature_mismatch() -> SdkError<GetObjectError> {
        let body = format!(
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we \
             calculated does not match the signature you provided.</Message><AWSAccessKeyId>\
             {KEY_ID}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 x-amz-security-token:SECRET\
             </StringToSign></Error>"
        );
        let error = GetObjectError::generic(
            ErrorMetadata::builder()
                .code("SignatureDoesNotMatch")
                .message("The request signature we calculated does not match the signature you provided.")
                .build(),
        );
        let mut raw = Response::new(StatusCode::try_from(403).unwrap(), SdkBody::from(body));
        raw.headers_mut().insert("x-amz-request-id", "REQ123");
        SdkError::service_error(error, raw)
    }

    #[test]
    fn a_service_error_is_its_code_message_and_status_without_the_response() {
        let error = signature_mismatch();
        let line = describe(&error);
        assert!(line.contains("SignatureDoesNotMatch"), "{line}");
        assert!(line.contains("does not match the signature"), "{line}");
        assert!(line.ends_with("(HTTP 403)"), "{line}");
        for secret in [KEY_ID, "SECRET", "StringToSign", "REQ123"] {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
        // What the SDK's own context printer would have leaked.
        let sdk = aws_sdk_s3::error::DisplayErrorContext(&error).to_string();
        assert!(sdk.contains(KEY_ID), "the test's premise: {sdk}");
    }
}
