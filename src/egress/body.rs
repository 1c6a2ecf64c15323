//! What an upload's body is checked against while it streams through, so a body that does not
//! match what the client declared never completes at the store: the signed SHA-256
//! (`x-amz-content-sha256`), an additional checksum (`x-amz-checksum-crc32` and the other
//! four S3 defines) sent as a header, and for `STREAMING-UNSIGNED-PAYLOAD-TRAILER` bodies the
//! aws-chunked framing itself (chunk sizes, the decoded length the signature covers) and the
//! checksum in its trailer. The body is passed on unchanged; the caller holds back its last
//! piece until [`BodyCheck::finish`] says it matches.
//!
//! The checksums are `s3s`'s (the same code the embedded store checks with). A store checks
//! them too, but some (s3s-fs among them) write the object before they compare.

use aws_lc_rs::digest;
use http::HeaderMap;
use s3s::checksum::ChecksumHasher;

use super::errors::S3Error;
use super::ops::CHECKSUM_HEADERS;
use super::sigv4::PayloadMode;

/// One of S3's additional checksum algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
    Crc64Nvme,
}

impl Algorithm {
    /// The algorithm of an `x-amz-checksum-*` value header (lower case).
    pub fn of_header(name: &str) -> Option<Algorithm> {
        Some(match name {
            "x-amz-checksum-crc32" => Algorithm::Crc32,
            "x-amz-checksum-crc32c" => Algorithm::Crc32c,
            "x-amz-checksum-sha1" => Algorithm::Sha1,
            "x-amz-checksum-sha256" => Algorithm::Sha256,
            "x-amz-checksum-crc64nvme" => Algorithm::Crc64Nvme,
            _ => return None,
        })
    }

    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
        }
    }

    fn hasher(self) -> ChecksumHasher {
        let mut h = ChecksumHasher::default();
        match self {
            Algorithm::Crc32 => h.crc32 = Some(Default::default()),
            Algorithm::Crc32c => h.crc32c = Some(Default::default()),
            Algorithm::Sha1 => h.sha1 = Some(Default::default()),
            Algorithm::Sha256 => h.sha256 = Some(Default::default()),
            Algorithm::Crc64Nvme => h.crc64nvme = Some(Default::default()),
        }
        h
    }

    /// The base64 value of a finished hasher.
    fn value(self, h: ChecksumHasher) -> Option<String> {
        let c = h.finalize();
        match self {
            Algorithm::Crc32 => c.checksum_crc32,
            Algorithm::Crc32c => c.checksum_crc32c,
            Algorithm::Sha1 => c.checksum_sha1,
            Algorithm::Sha256 => c.checksum_sha256,
            Algorithm::Crc64Nvme => c.checksum_crc64nvme,
        }
    }
}

/// Where the declared checksum is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Header(String),
    Trailer,
}

/// What a request's body is checked against, decided from its verified headers. Kept so each
/// attempt (Pingora may send the body again) starts a fresh [`BodyCheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySpec {
    sha256: Option<String>,
    checksum: Option<(Algorithm, Expected)>,
    /// aws-chunked framing, with the decoded length it must add up to.
    chunked: Option<u64>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn aws_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("aws-chunked"))
            })
        })
}

impl BodySpec {
    /// The checks for a request whose signature verified with `payload`. `hashed` says whether
    /// its body is hashed at all (a method with a body); `upload` whether the body is an
    /// object's content (PutObject, UploadPart), the only bodies additional checksums and the
    /// aws-chunked framing are accepted on. None when there is nothing to check.
    pub fn for_request(
        payload: &PayloadMode,
        headers: &HeaderMap,
        hashed: bool,
        upload: bool,
    ) -> Result<Option<BodySpec>, S3Error> {
        let given: Vec<&str> = CHECKSUM_HEADERS
            .iter()
            .copied()
            .filter(|h| headers.contains_key(*h))
            .collect();
        if payload == &PayloadMode::StreamingUnsignedTrailer {
            if !upload {
                return Err(S3Error::NOT_IMPLEMENTED);
            }
            if !aws_chunked(headers) || !given.is_empty() {
                return Err(S3Error::TRAILER_REQUIRED);
            }
            let decoded = header(headers, "x-amz-decoded-content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(S3Error::MISSING_LENGTH)?;
            let algorithm = header(headers, "x-amz-trailer")
                .map(str::to_ascii_lowercase)
                .and_then(|t| Algorithm::of_header(&t))
                .ok_or(S3Error::TRAILER_REQUIRED)?;
            return Ok(Some(BodySpec {
                sha256: None,
                checksum: Some((algorithm, Expected::Trailer)),
                chunked: Some(decoded),
            }));
        }
        if aws_chunked(headers) {
            return Err(S3Error::new(
                "InvalidRequest",
                400,
                "Content-Encoding: aws-chunked needs x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            ));
        }
        let sha256 = match payload {
            PayloadMode::Sha256(h) if hashed => Some(h.clone()),
            _ => None,
        };
        let checksum = match given.as_slice() {
            [] => None,
            [name] if upload => {
                let value = header(headers, name).unwrap_or("").to_string();
                Algorithm::of_header(name).map(|a| (a, Expected::Header(value)))
            }
            [_] => None,
            _ => return Err(S3Error::ONE_CHECKSUM),
        };
        if sha256.is_none() && checksum.is_none() {
            return Ok(None);
        }
        Ok(Some(BodySpec {
            sha256,
            checksum,
            chunked: None,
        }))
    }
}

/// The running check of one attempt at sending a body.
pub struct BodyCheck {
    sha256: Option<(digest::Context, String)>,
    checksum: Option<(Algorithm, ChecksumHasher, Expected)>,
    chunked: Option<Chunked>,
}

impl BodyCheck {
    pub fn new(spec: &BodySpec) -> BodyCheck {
        BodyCheck {
            sha256: spec
                .sha256
                .clone()
                .map(|h| (digest::Context::new(&digest::SHA256), h)),
            checksum: spec.checksum.clone().map(|(a, e)| (a, a.hasher(), e)),
            chunked: spec.chunked.map(Chunked::new),
        }
    }

    /// The next bytes of the body as they are sent. Framing errors show at once.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), S3Error> {
        if let Some((ctx, _)) = &mut self.sha256 {
            ctx.update(bytes);
        }
        let mut hasher = self.checksum.as_mut().map(|(_, h, _)| h);
        match &mut self.chunked {
            Some(c) => c
                .feed(bytes, |data| {
                    if let Some(h) = hasher.as_deref_mut() {
                        h.update(data);
                    }
                })
                .map_err(|Malformed| S3Error::BAD_CHUNKED),
            None => {
                if let Some(h) = hasher {
                    h.update(bytes);
                }
                Ok(())
            }
        }
    }

    /// The body has ended: whether it is the one declared.
    pub fn finish(self) -> Result<(), S3Error> {
        if let Some((ctx, want)) = self.sha256 {
            if hex::encode(ctx.finish()) != want {
                return Err(S3Error::SHA256_MISMATCH);
            }
        }
        let trailers = match self.chunked {
            Some(c) => c.finish().map_err(|Malformed| S3Error::BAD_CHUNKED)?,
            None => Vec::new(),
        };
        if let Some((algorithm, hasher, expected)) = self.checksum {
            let want = match expected {
                Expected::Header(v) => v,
                Expected::Trailer => trailers
                    .into_iter()
                    .find(|(k, _)| k == algorithm.header())
                    .map(|(_, v)| v)
                    .ok_or(S3Error::BAD_CHUNKED)?,
            };
            if algorithm.value(hasher).as_deref() != Some(want.as_str()) {
                return Err(S3Error::BAD_DIGEST);
            }
        }
        Ok(())
    }
}

/// The aws-chunked framing is not what it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// Longest chunk-size line or trailer line, and all trailers together.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading `<hex size>\r\n` (unsigned chunks carry no extension).
    Size,
    /// Inside a chunk: this many data bytes to go.
    Data(u64),
    /// After a chunk's data: this many bytes of its `\r\n` seen.
    DataEnd(u8),
    /// After the `0` chunk: `name:value\r\n` lines until an empty one.
    Trailer,
    Done,
}

/// An incremental reader of aws-chunked framing (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`): passes
/// the decoded data on and collects the trailers.
struct Chunked {
    state: State,
    line: Vec<u8>,
    decoded: u64,
    want: u64,
    trailers: Vec<(String, String)>,
    trailer_bytes: usize,
}

impl Chunked {
    fn new(want: u64) -> Chunked {
        Chunked {
            state: State::Size,
            line: Vec::new(),
            decoded: 0,
            want,
            trailers: Vec::new(),
            trailer_bytes: 0,
        }
    }

    fn feed(&mut self, mut b: &[u8], mut data: impl FnMut(&[u8])) -> Result<(), Malformed> {
        while !b.is_empty() {
            match self.state {
                State::Size | State::Trailer => {
                    let end = b.iter().position(|&c| c == b'\n');
                    let cut = end.map_or(b.len(), |i| i + 1);
                    self.line.extend_from_slice(&b[..cut]);
                    b = &b[cut..];
                    if self.line.len() > MAX_LINE {
                        return Err(Malformed);
                    }
                    if end.is_some() {
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line)?;
                    }
                }
                State::Data(n) => {
                    let k = b.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    data(&b[..k]);
                    self.decoded += k as u64;
                    b = &b[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 {
                        State::DataEnd(0)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(i) => {
                    if b[0] != b"\r\n"[usize::from(i)] {
                        return Err(Malformed);
                    }
                    b = &b[1..];
                    self.state = if i == 1 {
                        State::Size
                    } else {
                        State::DataEnd(1)
                    };
                }
                State::Done => return Err(Malformed),
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), Malformed> {
        let text = line.strip_suffix(b"\r\n").ok_or(Malformed)?;
        let text = std::str::from_utf8(text).map_err(|_| Malformed)?;
        if self.state == State::Size {
            if text.is_empty() || text.len() > 16 || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(Malformed);
            }
            let size = u64::from_str_radix(text, 16).map_err(|_| Malformed)?;
            if size == 0 {
                self.state = State::Trailer;
            } else if self.decoded.saturating_add(size) > self.want {
                return Err(Malformed);
            } else {
                self.state = State::Data(size);
            }
            return Ok(());
        }
        if text.is_empty() {
            self.state = State::Done;
            return Ok(());
        }
        self.trailer_bytes += line.len();
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(Malformed);
        }
        let (name, value) = text.split_once(':').ok_or(Malformed)?;
        self.trailers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        Ok(())
    }

    fn finish(self) -> Result<Vec<(String, String)>, Malformed> {
        if self.state != State::Done || self.decoded != self.want {
            return Err(Malformed);
        }
        Ok(self.trailers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// A body framed the way botocore frames it (`AwsChunkedWrapper`).
    fn framed(data: &[u8], chunk: usize, trailer: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("0\r\n{trailer}\r\n\r\n").as_bytes());
        out
    }

    fn crc32(data: &[u8]) -> String {
        let mut h = Algorithm::Crc32.hasher();
        h.update(data);
        Algorithm::Crc32.value(h).unwrap()
    }

    fn trailer_spec(len: usize) -> BodySpec {
        let h = headers(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", &len.to_string()),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ]);
        BodySpec::for_request(&PayloadMode::StreamingUnsignedTrailer, &h, true, true)
            .unwrap()
            .unwrap()
    }

    /// Runs a body through a check in pieces of `step` bytes.
    fn run(spec: &BodySpec, body: &[u8], step: usize) -> Result<(), S3Error> {
        let mut c = BodyCheck::new(spec);
        for piece in body.chunks(step) {
            c.update(piece)?;
        }
        c.finish()
    }

    #[test]
    fn aws_chunked_bodies_with_a_crc32_trailer() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let spec = trailer_spec(data.len());
        let good = framed(
            &data,
            65_536,
            &format!("x-amz-checksum-crc32:{}", crc32(&data)),
        );
        for step in [1, 7, 4096, good.len()] {
            assert_eq!(run(&spec, &good, step), Ok(()), "pieces of {step}");
        }
        // The known CRC32 of "hello" (base64 of 0x3610a686).
        assert_eq!(crc32(b"hello"), "NhCmhg==");
        let bad = framed(&data, 65_536, "x-amz-checksum-crc32:AAAAAA==");
        assert_eq!(run(&spec, &bad, 4096), Err(S3Error::BAD_DIGEST));
        // The data changed under the right trailer.
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert_eq!(run(&spec, &flipped, 4096), Err(S3Error::BAD_DIGEST));
        // Framing: short, long, a signed chunk, bytes after the end, no trailer.
        for body in [
            framed(
                &data[..10],
                5,
                &format!("x-amz-checksum-crc32:{}", crc32(&data[..10])),
            ),
            good[..good.len() - 2].to_vec(),
            [good.clone(), b"x".to_vec()].concat(),
            b"5;chunk-signature=00\r\nhello\r\n0\r\n\r\n".to_vec(),
            framed(&data, 65_536, "x-amz-meta-a:b"),
        ] {
            assert_eq!(run(&spec, &body, 4096), Err(S3Error::BAD_CHUNKED));
        }
    }

    #[test]
    fn header_checksums_and_signed_hashes() {
        let body = b"the real body";
        let h = headers(&[("x-amz-checksum-crc32", &crc32(body))]);
        let sha = hex::encode(digest::digest(&digest::SHA256, body));
        let spec = BodySpec::for_request(&PayloadMode::Sha256(sha.clone()), &h, true, true)
            .unwrap()
            .unwrap();
        assert_eq!(run(&spec, body, 3), Ok(()));
        assert_eq!(
            run(&spec, b"the fake body", 3),
            Err(S3Error::SHA256_MISMATCH)
        );
        let spec = BodySpec::for_request(&PayloadMode::Unsigned, &h, true, true)
            .unwrap()
            .unwrap();
        assert_eq!(run(&spec, b"the fake body", 3), Err(S3Error::BAD_DIGEST));
        // The full-object checksum of a CompleteMultipartUpload is not its body's.
        assert_eq!(
            BodySpec::for_request(&PayloadMode::Unsigned, &h, true, false),
            Ok(None)
        );
        let two = headers(&[("x-amz-checksum-crc32", "a"), ("x-amz-checksum-sha1", "b")]);
        assert_eq!(
            BodySpec::for_request(&PayloadMode::Unsigned, &two, true, true),
            Err(S3Error::ONE_CHECKSUM)
        );
    }

    #[test]
    fn trailer_mode_needs_its_headers() {
        let t = PayloadMode::StreamingUnsignedTrailer;
        let no_trailer = headers(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "5"),
        ]);
        assert_eq!(
            BodySpec::for_request(&t, &no_trailer, true, true),
            Err(S3Error::TRAILER_REQUIRED)
        );
        let no_encoding = headers(&[
            ("x-amz-decoded-content-length", "5"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ]);
        assert_eq!(
            BodySpec::for_request(&t, &no_encoding, true, true),
            Err(S3Error::TRAILER_REQUIRED)
        );
        let no_length = headers(&[
            ("content-encoding", "aws-chunked"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ]);
        assert_eq!(
            BodySpec::for_request(&t, &no_length, true, true),
            Err(S3Error::MISSING_LENGTH)
        );
        let chunked_plain = headers(&[("content-encoding", "aws-chunked")]);
        assert!(BodySpec::for_request(&PayloadMode::Unsigned, &chunked_plain, true, true).is_err());
    }
}
