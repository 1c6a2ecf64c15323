//! Content types recognised by their first bytes (magic numbers), never by the client's word.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Png,
    Jpeg,
    Gif,
    Webp,
    Mp4,
    Webm,
    Quicktime,
}

impl ContentType {
    /// Bytes needed to tell every type apart.
    pub const SNIFF_LEN: usize = 16;

    pub fn matches(self, b: &[u8]) -> bool {
        let at = |off: usize, m: &[u8]| b.get(off..off + m.len()) == Some(m);
        match self {
            ContentType::Png => at(0, b"\x89PNG\r\n\x1a\n"),
            ContentType::Jpeg => at(0, b"\xff\xd8\xff"),
            ContentType::Gif => at(0, b"GIF87a") || at(0, b"GIF89a"),
            ContentType::Webp => at(0, b"RIFF") && at(8, b"WEBP"),
            ContentType::Mp4 => at(4, b"ftyp") && !at(8, b"qt  "),
            ContentType::Quicktime => {
                at(4, b"ftypqt  ") || at(4, b"moov") || at(4, b"wide") || at(4, b"mdat")
            }
            ContentType::Webm => at(0, b"\x1a\x45\xdf\xa3"),
        }
    }

    /// The media type stored with an object of this type (never the client's `Content-Type`).
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Png => "image/png",
            ContentType::Jpeg => "image/jpeg",
            ContentType::Gif => "image/gif",
            ContentType::Webp => "image/webp",
            ContentType::Mp4 => "video/mp4",
            ContentType::Webm => "video/webm",
            ContentType::Quicktime => "video/quicktime",
        }
    }

    /// The first of `types` that the bytes are, if any.
    pub fn detect(types: &[ContentType], head: &[u8]) -> Option<ContentType> {
        types.iter().copied().find(|t| t.matches(head))
    }
}
