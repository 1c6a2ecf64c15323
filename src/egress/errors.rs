//! S3's error answers, so an SDK behind Portier raises what it would raise against S3
//! (`ClientError` with `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `AccessDenied`...).
//! Messages are fixed texts: no key, secret or signature is ever put in one.

/// One refusal: S3's code, status and a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Error {
    pub code: &'static str,
    pub status: u16,
    pub message: &'static str,
}

impl S3Error {
    pub const fn new(code: &'static str, status: u16, message: &'static str) -> S3Error {
        S3Error {
            code,
            status,
            message,
        }
    }

    pub const ACCESS_DENIED: S3Error = S3Error::new(
        "AccessDenied",
        403,
        "Access Denied by this service's egress rules",
    );
    pub const REQUEST_TIMEOUT: S3Error = S3Error::new(
        "RequestTimeout",
        400,
        "Your socket connection to the server was not read from or written to within the timeout period",
    );
    pub const NO_SUCH_BUCKET: S3Error =
        S3Error::new("NoSuchBucket", 404, "The specified bucket does not exist");
    pub const NOT_IMPLEMENTED: S3Error = S3Error::new(
        "NotImplemented",
        501,
        "This operation is not available through Portier's egress",
    );
    pub const INVALID_KEY: S3Error = S3Error::new(
        "InvalidArgument",
        400,
        "The object key is not in canonical form",
    );
    pub const MALFORMED_XML: S3Error = S3Error::new(
        "MalformedXML",
        400,
        "The XML you provided was not well-formed",
    );
    pub const SHA256_MISMATCH: S3Error = S3Error::new(
        "XAmzContentSHA256Mismatch",
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed",
    );
    pub const CHUNK_SIGNED: S3Error = S3Error::new(
        "InvalidRequest",
        400,
        "Chunk-signed uploads (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) are not accepted by Portier's egress: sign the whole body, or send UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER (AWS SDK for Java v2: S3Configuration.builder().chunkedEncodingEnabled(false); Java v1: AmazonS3ClientBuilder.disableChunkedEncoding(); boto3 never sends it)",
    );
    pub const BAD_QUERY: S3Error = S3Error::new(
        "InvalidArgument",
        400,
        "The query string is not validly percent-encoded UTF-8",
    );
    pub const REPEATED_PARAMETER: S3Error = S3Error::new(
        "InvalidArgument",
        400,
        "A query parameter is given more than once",
    );
    pub const HEADER_REFUSED: S3Error = S3Error::new(
        "NotImplemented",
        501,
        "A header you provided implies functionality that Portier's egress does not pass on (customer or KMS encryption keys, storage class, tagging, object lock, ACLs and grants, website redirects)",
    );
    pub const BAD_DIGEST: S3Error = S3Error::new(
        "BadDigest",
        400,
        "The checksum you specified did not match the calculated checksum",
    );
    pub const BAD_CHUNKED: S3Error = S3Error::new(
        "InvalidRequest",
        400,
        "The aws-chunked body is malformed or its length is not x-amz-decoded-content-length",
    );
    pub const TRAILER_REQUIRED: S3Error = S3Error::new(
        "InvalidRequest",
        400,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER needs Content-Encoding: aws-chunked and x-amz-trailer naming one of x-amz-checksum-crc32, -crc32c, -sha1, -sha256, -crc64nvme",
    );
    pub const ONE_CHECKSUM: S3Error = S3Error::new(
        "InvalidRequest",
        400,
        "Expecting a single x-amz-checksum- header",
    );
    pub const MISSING_LENGTH: S3Error = S3Error::new(
        "MissingContentLength",
        411,
        "You must provide the Content-Length HTTP header",
    );
    pub const TOO_LARGE: S3Error = S3Error::new(
        "EntityTooLarge",
        400,
        "Your proposed upload exceeds the maximum allowed size",
    );
    pub const INTERNAL: S3Error = S3Error::new(
        "InternalError",
        500,
        "We encountered an internal error. Please try again.",
    );
    pub const CREDENTIALS_UNAVAILABLE: S3Error = S3Error::new(
        "ServiceUnavailable",
        503,
        "Portier has no usable credentials for the bucket right now; try again shortly",
    );
    pub const STORE_REFUSED_PORTIER: S3Error = S3Error::new(
        "InternalError",
        500,
        "The bucket refused Portier's own request (its credentials, or a bucket or IAM policy narrower than the egress rules): a configuration problem on Portier's side, logged there",
    );

    /// The XML error document.
    /// A whole HTTP/1.1 answer with this error, closing the connection (written below
    /// Pingora's HTTP layer, for a request head that never ended).
    pub fn raw_response(&self) -> Vec<u8> {
        let body = self.document("portier");
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status,
            http::StatusCode::from_u16(self.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }

    pub fn document(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
            self.code,
            quick_xml::escape::escape(self.message),
            quick_xml::escape::escape(request_id)
        )
    }
}

impl From<&super::sigv4::SigError> for S3Error {
    fn from(e: &super::sigv4::SigError) -> S3Error {
        use super::sigv4::SigError as E;
        match e {
            E::Missing => S3Error::new("AccessDenied", 403, "Anonymous requests are not accepted"),
            E::Malformed(_) => S3Error::new(
                "AuthorizationHeaderMalformed",
                400,
                "The authorization is malformed",
            ),
            E::UnsignedHeader(_) => S3Error::new(
                "AccessDenied",
                403,
                "There were headers present in the request which were not signed",
            ),
            E::Scope(_) => S3Error::new(
                "AuthorizationHeaderMalformed",
                400,
                "The credential scope (date, region or service) is wrong",
            ),
            E::Algorithm => S3Error::new(
                "InvalidRequest",
                400,
                "Only AWS Signature Version 4 is accepted (boto3: Config(signature_version='s3v4'))",
            ),
            E::UnknownKey => S3Error::new(
                "InvalidAccessKeyId",
                403,
                "The AWS Access Key Id you provided does not exist in our records.",
            ),
            E::Mismatch => S3Error::new(
                "SignatureDoesNotMatch",
                403,
                "The request signature we calculated does not match the signature you provided.",
            ),
            E::Skewed => S3Error::new(
                "RequestTimeTooSkewed",
                403,
                "The difference between the request time and the current time is too large.",
            ),
            E::Expired => S3Error::new("AccessDenied", 403, "Request has expired"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_s3_shaped_and_escaped() {
        let d = S3Error::ACCESS_DENIED.document("req<1>");
        assert!(d.starts_with("<?xml"));
        assert!(d.contains("<Code>AccessDenied</Code>"));
        assert!(d.contains("<RequestId>req&lt;1&gt;</RequestId>"));
        let e: S3Error = (&super::super::sigv4::SigError::Mismatch).into();
        assert_eq!((e.code, e.status), ("SignatureDoesNotMatch", 403));
    }
}
