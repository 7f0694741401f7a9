//! What each key does to the state: plain code, tested without a terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::app::{Action, App, Confirm, Status, View};

/// The keys, for the help popup: (keys, what they do).
pub const HELP: &[(&str, &str)] = &[
    (
        "q  Esc",
        "quit (Esc first closes a popup, the filter or the detail)",
    ),
    ("?", "this help"),
    ("Tab", "switch between the nodes and the models view"),
    ("↑ ↓  j k", "move"),
    (
        "PgUp PgDn  g G",
        "move by a page, to the top, to the bottom",
    ),
    ("Enter", "the selected node's models"),
    ("← h  Backspace", "back from a node's models"),
    ("/", "filter by name (Enter keeps it, Esc clears it)"),
    ("u", "unload the selected model (asks y/n)"),
    ("w", "why the selected model is where it is, or nowhere"),
    ("d", "drain the selected node (asks y/n)"),
];

const PAGE: usize = 10;

impl App {
    /// Updates the state for a key press; returns what the caller must do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if self.confirm.is_some() {
            return self.on_confirm_key(key.code);
        }
        if self.editing_filter {
            self.on_filter_key(key.code);
            return None;
        }
        if self.why.is_some() {
            return match key.code {
                KeyCode::Char('q') => Some(Action::Quit),
                _ => {
                    self.why = None;
                    None
                }
            };
        }
        if self.show_help {
            return match key.code {
                KeyCode::Char('q') => Some(Action::Quit),
                _ => {
                    self.show_help = false;
                    None
                }
            };
        }
        // A key press replaces the last result shown.
        self.status = None;
        match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.set_filter(String::new());
                } else if self.view == View::NodeDetail {
                    self.leave_detail();
                } else {
                    return Some(Action::Quit);
                }
            }
            KeyCode::Char('?') => self.show_help = true,
            KeyCode::Tab | KeyCode::BackTab => {
                self.view = match self.view {
                    View::Nodes | View::NodeDetail => View::Models,
                    View::Models => View::Nodes,
                };
                self.set_filter(String::new());
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_cursor(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_cursor(1),
            KeyCode::PageUp => self.move_cursor(-(PAGE as isize)),
            KeyCode::PageDown => self.move_cursor(PAGE as isize),
            KeyCode::Home | KeyCode::Char('g') => *self.cursor_mut() = 0,
            KeyCode::End | KeyCode::Char('G') => {
                *self.cursor_mut() = self.row_count().saturating_sub(1);
            }
            KeyCode::Enter if self.view == View::Nodes => {
                if let Some(name) = self.selected_node().map(|n| n.name.clone()) {
                    self.detail_node = Some(name);
                    self.view = View::NodeDetail;
                    self.detail_cursor = 0;
                    self.set_filter(String::new());
                }
            }
            KeyCode::Left | KeyCode::Char('h') | KeyCode::Backspace
                if self.view == View::NodeDetail =>
            {
                self.leave_detail();
            }
            KeyCode::Char('/') => self.editing_filter = true,
            KeyCode::Char('u') => match self.selected_model() {
                Some(model) => {
                    self.confirm = Some(Confirm {
                        prompt: format!("Unload model {model} from every node?"),
                        action: Action::Unload(model),
                    });
                }
                None => self.hint("select a model first: Enter on a node, or Tab to models"),
            },
            KeyCode::Char('w') => match self.selected_model() {
                Some(model) => {
                    self.why = Some((model.clone(), None));
                    return Some(Action::Why(model));
                }
                None => self.hint("select a model first: Enter on a node, or Tab to models"),
            },
            KeyCode::Char('d') => match self.selected_node().map(|n| n.name.clone()) {
                Some(node) => {
                    self.confirm = Some(Confirm {
                        prompt: format!("Drain node {node} (move its models elsewhere)?"),
                        action: Action::Drain(node),
                    });
                }
                None => self.hint("select a node first: Tab to the nodes view"),
            },
            _ => {}
        }
        None
    }

    fn on_confirm_key(&mut self, code: KeyCode) -> Option<Action> {
        match code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                let confirm = self.confirm.take()?;
                let text = match &confirm.action {
                    Action::Unload(model) => format!("unloading {model}…"),
                    Action::Drain(node) => format!("draining {node}…"),
                    Action::Quit | Action::Why(_) => String::new(),
                };
                self.status = Some(Status { text, error: false });
                Some(confirm.action)
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                self.confirm = None;
                self.hint("cancelled");
                None
            }
            _ => None,
        }
    }

    fn on_filter_key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Esc => {
                self.editing_filter = false;
                self.set_filter(String::new());
            }
            KeyCode::Enter => self.editing_filter = false,
            KeyCode::Backspace => {
                let mut filter = self.filter.clone();
                filter.pop();
                self.set_filter(filter);
            }
            KeyCode::Char(c) => {
                let mut filter = self.filter.clone();
                filter.push(c);
                self.set_filter(filter);
            }
            _ => {}
        }
    }

    fn set_filter(&mut self, filter: String) {
        if filter != self.filter {
            self.filter = filter;
            *self.cursor_mut() = 0;
        }
        self.clamp_cursors();
    }

    fn leave_detail(&mut self) {
        self.view = View::Nodes;
        self.set_filter(String::new());
        // Back on the node that was open.
        if let Some(name) = self.detail_node.take() {
            if let Some(i) = self.visible_nodes().iter().position(|n| n.name == name) {
                self.node_cursor = i;
            }
        }
    }

    fn move_cursor(&mut self, by: isize) {
        let count = self.row_count();
        let cursor = self.cursor_mut();
        let next = cursor.saturating_add_signed(by);
        *cursor = next.min(count.saturating_sub(1));
    }

    fn hint(&mut self, text: &str) {
        self.status = Some(Status {
            text: text.to_string(),
            error: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;
    use tokio::time::Instant;

    fn app() -> App {
        let now = Instant::now();
        let mut app = App::new("sched:8001", true, now);
        app.apply_update(cluster(0), now);
        app
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn press(app: &mut App, keys: &[KeyCode]) -> Option<Action> {
        let mut last = None;
        for code in keys {
            last = app.on_key(key(*code));
        }
        last
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        assert_eq!(app().on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(app().on_key(key(KeyCode::Esc)), Some(Action::Quit));
        assert_eq!(
            app().on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
    }

    #[test]
    fn arrows_and_jk_move_within_the_list() {
        let mut app = app();
        press(
            &mut app,
            &[KeyCode::Down, KeyCode::Char('j'), KeyCode::Down],
        );
        assert_eq!(app.node_cursor, 2, "stops at the last node");
        press(&mut app, &[KeyCode::Char('k')]);
        assert_eq!(app.node_cursor, 1);
        press(&mut app, &[KeyCode::Up, KeyCode::Up]);
        assert_eq!(app.node_cursor, 0);
        press(&mut app, &[KeyCode::Char('G')]);
        assert_eq!(app.node_cursor, 2);
    }

    #[test]
    fn enter_opens_the_node_and_esc_goes_back() {
        let mut app = app();
        press(&mut app, &[KeyCode::Down, KeyCode::Enter]);
        assert_eq!(app.view, View::NodeDetail);
        assert_eq!(app.detail().map(|n| n.name.as_str()), Some("node-b"));
        assert_eq!(press(&mut app, &[KeyCode::Esc]), None);
        assert_eq!(app.view, View::Nodes);
        assert_eq!(app.node_cursor, 1, "back on the node that was open");
    }

    #[test]
    fn tab_switches_views() {
        let mut app = app();
        press(&mut app, &[KeyCode::Tab]);
        assert_eq!(app.view, View::Models);
        press(&mut app, &[KeyCode::Tab]);
        assert_eq!(app.view, View::Nodes);
    }

    #[test]
    fn w_asks_why_for_the_selected_model_and_any_key_closes_the_answer() {
        let mut app = app();
        press(&mut app, &[KeyCode::Tab]);
        let model = app.selected_model().expect("a model selected");
        assert_eq!(
            press(&mut app, &[KeyCode::Char('w')]),
            Some(Action::Why(model.clone()))
        );
        assert_eq!(app.why, Some((model.clone(), None)), "asked, no answer yet");
        app.on_why("another".into(), Ok("stale".into()));
        assert_eq!(
            app.why,
            Some((model.clone(), None)),
            "an answer for another model"
        );
        app.on_why(model.clone(), Ok("the table".into()));
        assert_eq!(app.why, Some((model, Some(Ok("the table".into())))));
        assert_eq!(press(&mut app, &[KeyCode::Char('j')]), None);
        assert_eq!(app.why, None, "closed, and the key did nothing else");
        assert_eq!(app.model_cursor, 0);
    }

    #[test]
    fn drain_asks_first_and_y_confirms() {
        let mut app = app();
        assert_eq!(press(&mut app, &[KeyCode::Down, KeyCode::Char('d')]), None);
        assert!(app.confirm.is_some());
        // Other keys do nothing while the question is open.
        assert_eq!(press(&mut app, &[KeyCode::Char('j')]), None);
        assert_eq!(app.node_cursor, 1);
        assert_eq!(
            press(&mut app, &[KeyCode::Char('y')]),
            Some(Action::Drain("node-b".to_string()))
        );
        assert!(app.confirm.is_none());
        assert_eq!(
            app.status.as_ref().map(|s| s.text.as_str()),
            Some("draining node-b…")
        );
        app.on_action_result(Ok("drained node-b; moved magika".to_string()));
        assert_eq!(
            app.status,
            Some(Status {
                text: "drained node-b; moved magika".to_string(),
                error: false
            })
        );
        app.on_action_result(Err("drain node-b failed: unavailable".to_string()));
        assert!(app.status.as_ref().is_some_and(|s| s.error));
    }

    #[test]
    fn n_cancels() {
        let mut app = app();
        press(&mut app, &[KeyCode::Char('d')]);
        assert_eq!(press(&mut app, &[KeyCode::Char('n')]), None);
        assert!(app.confirm.is_none());
        assert_eq!(press(&mut app, &[KeyCode::Char('d'), KeyCode::Esc]), None);
        assert!(app.confirm.is_none());
    }

    #[test]
    fn unload_the_selected_model_in_detail_and_models_views() {
        let mut app = app();
        // No model is selected in the nodes view: a hint, no question.
        press(&mut app, &[KeyCode::Char('u')]);
        assert!(app.confirm.is_none());
        assert!(app.status.is_some());
        // node-a's models: ppocr-det, resnet50.
        press(
            &mut app,
            &[KeyCode::Enter, KeyCode::Down, KeyCode::Char('u')],
        );
        assert_eq!(
            press(&mut app, &[KeyCode::Char('y')]),
            Some(Action::Unload("resnet50".to_string()))
        );
        press(&mut app, &[KeyCode::Tab, KeyCode::Char('u')]);
        assert_eq!(
            press(&mut app, &[KeyCode::Char('Y')]),
            Some(Action::Unload("bad-model".to_string()))
        );
    }

    #[test]
    fn slash_filters_and_esc_clears() {
        let mut app = app();
        press(
            &mut app,
            &[
                KeyCode::Char('/'),
                KeyCode::Char('N'),
                KeyCode::Char('o'),
                KeyCode::Char('d'),
                KeyCode::Char('e'),
                KeyCode::Char('-'),
                KeyCode::Char('c'),
            ],
        );
        assert!(app.editing_filter);
        // q is text while typing a filter.
        assert_eq!(press(&mut app, &[KeyCode::Char('q')]), None);
        press(&mut app, &[KeyCode::Backspace, KeyCode::Enter]);
        assert!(!app.editing_filter);
        assert_eq!(app.filter, "Node-c");
        let visible: Vec<&str> = app
            .visible_nodes()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(visible, ["node-c"], "case-insensitive");
        // d drains the filtered node.
        press(&mut app, &[KeyCode::Char('d')]);
        assert_eq!(
            press(&mut app, &[KeyCode::Char('y')]),
            Some(Action::Drain("node-c".into()))
        );
        // Esc clears the filter before it quits.
        assert_eq!(press(&mut app, &[KeyCode::Esc]), None);
        assert!(app.filter.is_empty());
        assert_eq!(app.visible_nodes().len(), 3);
        // A model filter also finds models by the nodes holding them.
        press(
            &mut app,
            &[
                KeyCode::Tab,
                KeyCode::Char('/'),
                KeyCode::Char('n'),
                KeyCode::Char('o'),
                KeyCode::Char('d'),
                KeyCode::Char('e'),
                KeyCode::Char('-'),
                KeyCode::Char('a'),
                KeyCode::Enter,
            ],
        );
        let models: Vec<&str> = app
            .visible_models()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(models, ["ppocr-det", "resnet50"]);
    }

    #[test]
    fn help_opens_and_any_key_closes_it() {
        let mut app = app();
        press(&mut app, &[KeyCode::Char('?')]);
        assert!(app.show_help);
        assert_eq!(press(&mut app, &[KeyCode::Down]), None);
        assert!(!app.show_help);
        assert_eq!(app.node_cursor, 0, "the key only closed the help");
    }

    #[test]
    fn key_releases_are_ignored() {
        let mut app = app();
        let mut release = key(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(app.on_key(release), None);
    }
}
