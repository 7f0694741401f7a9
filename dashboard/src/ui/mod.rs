//! Rendering: functions of `&App` that draw into a ratatui `Frame`. They decide nothing.

mod detail;
pub mod format;
mod models;
mod nodes;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::app::{App, Connection, View};
use crate::keys::HELP;

/// Width from which tables show their extra columns.
pub(crate) const WIDE: u16 = 120;

/// Styles, plain under NO_COLOR and grey while the data is stale.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Theme {
    color: bool,
    stale: bool,
}

impl Theme {
    pub(crate) fn of(app: &App) -> Self {
        Theme {
            color: app.color,
            stale: app.is_stale() && app.has_data,
        }
    }

    fn colored(&self, color: Color) -> Style {
        match (self.color, self.stale) {
            (false, false) => Style::default(),
            (false, true) => Style::default().add_modifier(Modifier::DIM),
            (true, true) => Style::default().fg(Color::DarkGray),
            (true, false) => Style::default().fg(color),
        }
    }

    /// Ordinary data.
    pub(crate) fn data(&self) -> Style {
        self.colored(Color::Reset)
    }
    pub(crate) fn good(&self) -> Style {
        self.colored(Color::Green)
    }
    pub(crate) fn warn(&self) -> Style {
        self.colored(Color::Yellow)
    }
    pub(crate) fn bad(&self) -> Style {
        self.colored(Color::Red)
    }
    pub(crate) fn accent(&self) -> Style {
        self.colored(Color::Cyan)
    }
    /// What matters less: down nodes, missing values.
    pub(crate) fn faint(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }
    pub(crate) fn header(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub(crate) fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    /// Style for a fill fraction of a gauge: green, then yellow, then red.
    pub(crate) fn load(&self, fraction: f64) -> Style {
        if fraction >= 0.9 {
            self.bad()
        } else if fraction >= 0.7 {
            self.warn()
        } else {
            self.good()
        }
    }
    /// Always visible, even under NO_COLOR and when stale: errors and prompts.
    fn alert(&self) -> Style {
        if self.color {
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED)
        }
    }
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, app: &App) {
    let theme = Theme::of(app);
    let area = frame.area();
    let banner = u16::from(!matches!(app.connection, Connection::Connected));
    let events_height = (area.height / 4).max(4);
    let [tabs, summary, banner_area, main, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Min(3),
        Constraint::Length(events_height),
        Constraint::Length(1),
    ])
    .areas(area);

    render_tabs(frame, app, &theme, tabs);
    render_summary(frame, app, &theme, summary);
    if banner > 0 {
        render_banner(frame, app, &theme, banner_area);
    }
    if !app.has_data {
        let text = match &app.connection {
            Connection::Disconnected { .. } => "no data from the scheduler yet",
            _ => "waiting for the scheduler's first snapshot…",
        };
        frame.render_widget(Paragraph::new(text).style(theme.faint()), main);
    } else {
        match app.view {
            View::Nodes => nodes::render(frame, app, &theme, main),
            View::NodeDetail => detail::render(frame, app, &theme, main),
            View::Models => models::render(frame, app, &theme, main),
        }
    }
    render_events(frame, app, &theme, events);
    render_footer(frame, app, &theme, footer);
    if app.show_help {
        render_help(frame, &theme, area);
    }
    if let Some((model, answer)) = &app.why {
        render_why(frame, &theme, area, model, answer.as_ref());
    }
}

/// Placement's answer about one model, as `herd models why` prints it.
fn render_why(
    frame: &mut Frame,
    theme: &Theme,
    area: Rect,
    model: &str,
    answer: Option<&Result<String, String>>,
) {
    let mut lines: Vec<Line> = match answer {
        None => vec![Line::from(Span::styled(
            "asking the scheduler…",
            theme.faint(),
        ))],
        Some(Ok(text)) => text.lines().map(|l| Line::from(l.to_string())).collect(),
        Some(Err(e)) => vec![Line::from(Span::styled(e.clone(), theme.bad()))],
    };
    lines.push(Line::from(Span::styled(
        "any key closes this",
        theme.faint(),
    )));
    let widest = lines.iter().map(Line::width).max().unwrap_or(0) as u16;
    let popup = centered(
        area,
        widest.saturating_add(4).max(40),
        lines.len() as u16 + 2,
    );
    frame.render_widget(Clear, popup);
    // Not wrapped: a table's rows stay rows, cut at the right edge of a small terminal.
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(" Why {model} "))),
        popup,
    );
}

fn render_tabs(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let tab = |name: &'static str, active: bool| {
        if active {
            Span::styled(
                format!(" {name} "),
                theme.selected().add_modifier(Modifier::BOLD),
            )
        } else {
            Span::raw(format!(" {name} "))
        }
    };
    let nodes_title = match (app.view, app.detail()) {
        (View::NodeDetail, Some(node)) => format!("Nodes › {}", node.name),
        _ => "Nodes".to_string(),
    };
    let (state, style) = match &app.connection {
        Connection::Connected => ("● connected", theme.good()),
        Connection::Connecting => ("○ connecting", theme.warn()),
        Connection::Disconnected { .. } => ("✕ disconnected", theme.alert()),
    };
    let left = Line::from(vec![
        Span::styled(" herd ", theme.header()),
        Span::raw("│"),
        if app.view == View::Nodes || app.view == View::NodeDetail {
            Span::styled(
                format!(" {nodes_title} "),
                theme.selected().add_modifier(Modifier::BOLD),
            )
        } else {
            Span::raw(format!(" {nodes_title} "))
        },
        tab("Models", app.view == View::Models),
    ]);
    let right = Line::from(vec![
        Span::styled(state, style),
        Span::raw(format!(" {} ", app.scheduler)),
    ])
    .right_aligned();
    let fits = area.width as usize > left.width() + right.width();
    frame.render_widget(left, area);
    if fits {
        frame.render_widget(right, area);
    }
}

fn render_summary(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    if !app.has_data {
        return;
    }
    let s = &app.summary;
    let down = s.nodes_total.saturating_sub(s.nodes_up);
    let mem_fraction = format::fraction(s.memory_used_bytes, s.memory_capacity_bytes);
    let mut spans = vec![
        Span::styled(" nodes ", theme.faint()),
        Span::styled(
            format!("{}/{} up", s.nodes_up, s.nodes_total),
            if down > 0 { theme.warn() } else { theme.good() },
        ),
        Span::styled("  mem ", theme.faint()),
        Span::styled(
            format::size_pair(s.memory_used_bytes, s.memory_capacity_bytes),
            theme.load(mem_fraction),
        ),
        Span::styled("  req/s ", theme.faint()),
        Span::styled(format::rate(Some(s.requests_per_s)), theme.data()),
        Span::styled("  models ", theme.faint()),
        Span::styled(
            format!("{}/{} loaded", s.models_loaded, s.models_total),
            theme.data(),
        ),
    ];
    if area.width >= 100 {
        spans.push(Span::styled(
            format!("  at {} UTC", format::clock(app.snapshot_time_ms)),
            theme.faint(),
        ));
    }
    frame.render_widget(Line::from(spans), area);
}

fn render_banner(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let text = match &app.connection {
        Connection::Connected => return,
        Connection::Connecting => format!(" connecting to {}…", app.scheduler),
        Connection::Disconnected { error, .. } => {
            let seconds = app.retry_in_seconds().unwrap_or(0);
            let kept = if app.has_data {
                " · last data greyed"
            } else {
                ""
            };
            format!(" disconnected — retrying in {seconds} s{kept} · {error}")
        }
    };
    let style = match app.connection {
        Connection::Disconnected { .. } => theme.alert(),
        _ => theme.warn(),
    };
    frame.render_widget(Paragraph::new(text).style(style), area);
}

fn render_events(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(" Events (UTC) ")
        .border_style(theme.faint());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let lines: Vec<Line> = app
        .events
        .iter()
        .rev()
        .take(inner.height as usize)
        .map(|e| {
            let style = match e.kind.as_str() {
                "down" | "load_failed" => theme.bad(),
                "evicted" | "unloaded" | "drained" => theme.warn(),
                "joined" | "placed" => theme.good(),
                _ => theme.data(),
            };
            let subject = match (e.model.is_empty(), e.node.is_empty()) {
                (false, false) => format!("{} on {}", e.model, e.node),
                (false, true) => e.model.clone(),
                (true, false) => e.node.clone(),
                (true, true) => String::new(),
            };
            let mut spans = vec![
                Span::styled(format!("{} ", format::clock(e.time_ms)), theme.faint()),
                Span::styled(format!("{:<11} ", e.kind), style),
                Span::styled(subject, theme.data()),
            ];
            if !e.message.is_empty() {
                spans.push(Span::styled(format!(": {}", e.message), theme.data()));
            }
            Line::from(spans)
        })
        .collect();
    if lines.is_empty() {
        frame.render_widget(Paragraph::new("no events yet").style(theme.faint()), inner);
    } else {
        frame.render_widget(Paragraph::new(lines), inner);
    }
}

fn render_footer(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let line = if let Some(confirm) = &app.confirm {
        Line::from(vec![
            Span::styled(format!(" {} ", confirm.prompt), theme.alert()),
            Span::raw(" y/n"),
        ])
    } else if app.editing_filter {
        Line::from(vec![
            Span::styled(" filter: ", theme.header()),
            Span::raw(format!("{}▏", app.filter)),
            Span::styled("  Enter keeps, Esc clears", theme.faint()),
        ])
    } else if let Some(status) = &app.status {
        let style = if status.error {
            theme.alert()
        } else {
            theme.header()
        };
        Line::from(Span::styled(format!(" {} ", status.text), style))
    } else {
        let mut spans = Vec::new();
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!(" filter: {} ", app.filter),
                theme.selected(),
            ));
        }
        let keys: &[(&str, &str)] = match app.view {
            View::Nodes => &[
                ("q", "quit"),
                ("?", "help"),
                ("Tab", "models"),
                ("↑↓", "move"),
                ("⏎", "detail"),
                ("/", "filter"),
                ("d", "drain"),
            ],
            View::NodeDetail => &[
                ("q", "quit"),
                ("?", "help"),
                ("Esc", "back"),
                ("↑↓", "move"),
                ("/", "filter"),
                ("u", "unload"),
                ("w", "why"),
                ("d", "drain node"),
            ],
            View::Models => &[
                ("q", "quit"),
                ("?", "help"),
                ("Tab", "nodes"),
                ("↑↓", "move"),
                ("/", "filter"),
                ("u", "unload"),
                ("w", "why"),
            ],
        };
        for (key, what) in keys {
            spans.push(Span::styled(format!(" {key}"), theme.header()));
            spans.push(Span::styled(format!(" {what} "), theme.faint()));
        }
        Line::from(spans)
    };
    frame.render_widget(line, area);
}

/// A popup of `width` × `height` in the middle of `area`, cut to fit it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let (width, height) = (width.min(area.width), height.min(area.height));
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn render_help(frame: &mut Frame, theme: &Theme, area: Rect) {
    let popup = centered(area, 76, HELP.len() as u16 + 3);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:>15}  "), theme.header()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(Span::styled(
        "                 any key closes this help",
        theme.faint(),
    )));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Keys ")),
        popup,
    );
}

/// A state's name from the view-model, `?` for an unspecified one.
pub(crate) fn state_word(name: String) -> String {
    if name == "unspecified" {
        "?".to_string()
    } else {
        name
    }
}

/// Widths of `(name, width)` columns: 0 takes what is left.
pub(crate) fn widths(columns: &[(&str, u16)]) -> Vec<Constraint> {
    columns
        .iter()
        .map(|(_, w)| match w {
            0 => Constraint::Fill(1),
            w => Constraint::Length(*w),
        })
        .collect()
}

/// A table (rows and header) with the cursor's row highlighted; without rows, `empty`
/// says why under the header. The three views draw their tables through it.
pub(crate) fn draw_table(
    frame: &mut Frame,
    area: Rect,
    table: ratatui::widgets::Table<'_>,
    selected: Option<usize>,
    empty: &str,
    theme: &Theme,
) {
    let table = table
        .column_spacing(1)
        .row_highlight_style(theme.selected());
    let mut state = ratatui::widgets::TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
    if selected.is_none() {
        frame.render_widget(
            Paragraph::new(empty).style(theme.faint()),
            Rect {
                y: area.y + 1,
                height: area.height.saturating_sub(1),
                ..area
            },
        );
    }
}

/// The rows of a list to draw so that the cursor shows: (first row, cursor within).
pub(crate) fn window(cursor: usize, rows: usize, height: usize) -> (usize, usize) {
    if height == 0 || rows <= height {
        return (0, cursor);
    }
    let first = cursor.saturating_sub(height - 1).min(rows - height);
    (first, cursor - first)
}
