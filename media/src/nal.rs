//! H.264 / HEVC bitstream facts the containers do not tell reliably: whether an access unit
//! is an IDR (so a segment can start there), and the RFC 6381 codec string.

/// Iterates NAL unit payloads of an access unit in Annex B or 4-byte length-prefixed form.
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let annexb = data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1]);
    if annexb {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        for (k, &s) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
            let mut nal = &data[s..end.max(s)];
            while nal.last() == Some(&0) {
                nal = &nal[..nal.len() - 1];
            }
            if !nal.is_empty() {
                out.push(nal);
            }
        }
    } else {
        let mut i = 0;
        while i + 4 <= data.len() {
            let len = u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
            i += 4;
            if len == 0 || i + len > data.len() {
                break;
            }
            out.push(&data[i..i + len]);
            i += len;
        }
    }
    out
}

/// Whether an H.264 access unit holds an IDR picture (NAL type 5).
pub fn h264_is_idr(data: &[u8]) -> bool {
    nal_units(data).iter().any(|n| n[0] & 0x1f == 5)
}

/// Whether an HEVC access unit starts a closed GOP (IDR_W_RADL, IDR_N_LP or BLA).
pub fn hevc_is_closed_irap(data: &[u8]) -> bool {
    nal_units(data)
        .iter()
        .any(|n| (16..=20).contains(&((n[0] >> 1) & 0x3f)))
}

/// RFC 6381 `avc1.PPCCLL` from the first SPS in an access unit.
pub fn avc_codec_string(data: &[u8]) -> Option<String> {
    nal_units(data)
        .iter()
        .find(|n| n[0] & 0x1f == 7 && n.len() >= 4)
        .map(|sps| format!("avc1.{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3]))
}

/// Finds a start code `00 00 01 <code>` and returns the bytes after it.
fn after_start_code(data: &[u8], code: u8) -> Option<&[u8]> {
    data.windows(4)
        .position(|w| w == [0, 0, 1, code])
        .map(|i| &data[i + 4..])
}

/// The MPEG-1/2 GOP header's `closed_gop` (or `broken_link`) flag, when the packet has one.
pub fn mpeg2_gop_closed(data: &[u8]) -> Option<bool> {
    let gop = after_start_code(data, 0xb8)?;
    gop.get(3).map(|b| b & 0x60 != 0)
}

/// The MPEG-4 part 2 GOV header's `closed_gov` (or `broken_link`) flag, when present.
pub fn mpeg4_gov_closed(data: &[u8]) -> Option<bool> {
    let gov = after_start_code(data, 0xb3)?;
    gov.get(2).map(|b| b & 0x30 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: [u8; 5] = [0x67, 0x64, 0x00, 0x1f, 0xac];

    #[test]
    fn annexb_idr_and_codec() {
        let mut au = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1];
        au.extend_from_slice(&SPS);
        au.extend_from_slice(&[0, 0, 1, 0x68, 0xee, 0, 0, 1, 0x65, 0x88, 0x84]);
        assert!(h264_is_idr(&au));
        assert_eq!(avc_codec_string(&au).as_deref(), Some("avc1.64001f"));
        let p = [0, 0, 0, 1, 0x41, 0x9a, 0x00];
        assert!(!h264_is_idr(&p));
        assert_eq!(avc_codec_string(&p), None);
    }

    #[test]
    fn length_prefixed_idr() {
        let au = [0, 0, 0, 3, 0x65, 0x88, 0x84];
        assert!(h264_is_idr(&au));
        let non_idr_i = [0, 0, 0, 2, 0x61, 0x00];
        assert!(!h264_is_idr(&non_idr_i));
        assert!(
            !h264_is_idr(&[0, 0, 0, 9, 0x65]),
            "truncated input is not an IDR"
        );
    }

    #[test]
    fn gop_header_flags() {
        // time code 00:00:00:00 (25 bits), then closed_gop.
        assert_eq!(
            mpeg2_gop_closed(&[0, 0, 1, 0xb8, 0, 8, 0, 0x40]),
            Some(true)
        );
        assert_eq!(
            mpeg2_gop_closed(&[0, 0, 1, 0xb8, 0, 8, 0, 0x00]),
            Some(false)
        );
        assert_eq!(mpeg2_gop_closed(&[0, 0, 1, 0x00, 1, 2]), None);
        assert_eq!(
            mpeg4_gov_closed(&[0, 0, 1, 0xb3, 0, 0x10, 0x20]),
            Some(true)
        );
        assert_eq!(
            mpeg4_gov_closed(&[0, 0, 1, 0xb3, 0, 0x10, 0x00]),
            Some(false)
        );
    }

    #[test]
    fn hevc_irap_kinds() {
        let idr = [0, 0, 1, 19 << 1, 1, 0xaf];
        let cra = [0, 0, 1, 21 << 1, 1, 0xaf];
        assert!(hevc_is_closed_irap(&idr));
        assert!(!hevc_is_closed_irap(&cra), "CRA is an open GOP");
    }
}
