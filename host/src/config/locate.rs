//! Where each key of a YAML document stands.
//!
//! serde_yaml reports positions for errors it finds itself, but its values keep no spans. Errors
//! found after parsing (a plugin refusing its config, a bad policy value) need the key's line and
//! column, so the document is read a second time with yaml-rust2's event parser, which reports a
//! marker for every node, and each key path (`sink.config.url`, `transforms[1].plugin`) is mapped
//! to its position.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key paths of a document and their 1-based (line, column).
#[derive(Debug, Default)]
pub struct KeyPositions {
    positions: HashMap<String, (usize, usize)>,
}

impl KeyPositions {
    /// Reads `text`. A document yaml-rust2 cannot parse yields no positions (serde_yaml reports
    /// the syntax error itself).
    pub fn read(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        KeyPositions {
            positions: builder.positions,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next, if a key was read.
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the node that starts now, recording its position; advances the parent.
    fn enter_value(&mut self, mark: Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => {
                let k = key.take()?;
                Some(join(path, &k))
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.positions.insert(p.clone(), pos);
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &value);
                        self.positions.insert(p, (mark.line(), mark.col() + 1));
                        *key = Some(value);
                        return;
                    }
                }
                self.enter_value(mark);
            }
            Event::Alias(_) => {
                self.enter_value(mark);
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(mark).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(mark).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let doc = "name: x\nsource:\n  plugin: file\n  config:\n    path: in.txt\ntransforms:\n  - plugin: json\n    config: { set: { a: 1 } }\n";
        let k = KeyPositions::read(doc);
        assert_eq!(k.find("name"), Some((1, 1)));
        assert_eq!(k.find("source.config.path"), Some((5, 5)));
        assert_eq!(k.find("transforms[0].plugin"), Some((7, 5)));
        assert_eq!(k.find("transforms[0].config.set.a"), Some((8, 22)));
        // An unknown key falls back to its nearest known ancestor.
        assert_eq!(k.find("source.config.nope"), Some((4, 3)));
    }
}
