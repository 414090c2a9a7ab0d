//! A minimal Server-Sent Events parser for `GET /v1/watch`: `id:`, `event:`
//! and `data:` fields, comments, and a blank line ending each message. It is
//! fed raw bytes as they arrive, so a message may span any number of chunks.

/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field; `message` when the server sent none.
    pub event: String,
    /// The `id:` field of this message, if it had one.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Turns a byte stream into [`SseMessage`]s.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended by `\n`.
    pending: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds `chunk` and returns every message it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.pending.extend_from_slice(chunk);
        let mut messages = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = &self.pending[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(message) = self.line(&line) {
                messages.push(message);
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        messages
    }

    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            // A blank line dispatches; a message without data is dropped (per spec).
            let event = self.event.take();
            let id = self.id.take();
            let data = self.data.take()?;
            return Some(SseMessage {
                event: event.unwrap_or_else(|| "message".to_string()),
                id,
                data,
            });
        }
        if line.starts_with(':') {
            return None; // a comment, e.g. a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {} // `retry:` and unknown fields are ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(event: &str, id: Option<&str>, data: &str) -> SseMessage {
        SseMessage {
            event: event.to_string(),
            id: id.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn parses_fields_and_dispatches_on_blank_lines() {
        let mut parser = SseParser::new();
        let got =
            parser.push(b"event: baton\nid: 7.0\ndata: {\"a\":1}\n\nevent: cut_off\ndata: x\n\n");
        assert_eq!(
            got,
            vec![
                message("baton", Some("7.0"), "{\"a\":1}"),
                message("cut_off", None, "x")
            ]
        );
    }

    #[test]
    fn messages_may_span_chunks_at_any_byte() {
        let stream = b"event: baton\r\nid: 3.1\r\ndata: {\"k\":\"v\"}\r\n\r\n: keep-alive\n\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::new();
            let mut got = parser.push(&stream[..split]);
            got.extend(parser.push(&stream[split..]));
            assert_eq!(
                got,
                vec![message("baton", Some("3.1"), "{\"k\":\"v\"}")],
                "split at {split}"
            );
        }
    }

    #[test]
    fn multi_line_data_joins_with_newlines_and_defaults_the_event() {
        let mut parser = SseParser::new();
        let got = parser.push(b"data: one\ndata:two\ndata\n\n");
        assert_eq!(got, vec![message("message", None, "one\ntwo\n")]);
    }

    #[test]
    fn comments_and_data_less_messages_dispatch_nothing() {
        let mut parser = SseParser::new();
        assert!(
            parser
                .push(b": ping\n\nevent: baton\nid: 1.0\n\n")
                .is_empty()
        );
        // The dropped message's fields do not leak into the next one.
        assert_eq!(
            parser.push(b"data: x\n\n"),
            vec![message("message", None, "x")]
        );
    }

    #[test]
    fn an_unfinished_message_is_kept_until_its_blank_line() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"event: baton\ndata: 1\n").is_empty());
        assert_eq!(parser.push(b"\n"), vec![message("baton", None, "1")]);
    }
}
