//! The node detail view: one node's resources and the models it holds.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use herd_client::view::{self, NodeModelView};
use herd_proto::herd::{ModelState, NodeState};

use super::nodes::{gauge, gpu_gauges, node_state_word, state_style};
use super::{draw_table, format, state_word, widths, window, Theme, WIDE};
use crate::app::App;

/// A model's state as a word.
pub(crate) fn model_state_word(state: ModelState) -> String {
    state_word(view::model_state(state))
}

pub(crate) fn model_state_style(theme: &Theme, state: ModelState) -> ratatui::style::Style {
    match state {
        ModelState::Ready => theme.good(),
        ModelState::Loading | ModelState::Unloading => theme.warn(),
        ModelState::Failed => theme.bad(),
        ModelState::Available | ModelState::Unspecified => theme.faint(),
    }
}

pub(crate) fn render(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(node) = app.detail() else {
        let name = app.detail_node.as_deref().unwrap_or("?");
        frame.render_widget(
            Paragraph::new(format!("node {name} has left the cluster; Esc goes back"))
                .style(theme.faint()),
            area,
        );
        return;
    };
    let wide = area.width >= WIDE;
    let [about, table_area] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(area);

    let t = if node.state == NodeState::Down {
        Theme::faint_theme(theme)
    } else {
        *theme
    };
    let head = vec![
        Span::styled(format!(" {} ", node.name), theme.header()),
        Span::styled(format!("{} ", node.address), t.data()),
        Span::styled(node_state_word(node.state), state_style(theme, node.state)),
        Span::styled(
            format!(
                "  last report {:.1} s ago",
                node.last_report_ms as f64 / 1000.0
            ),
            theme.faint(),
        ),
    ];
    let mut resources = vec![Span::styled(" RAM ", theme.faint())];
    resources.extend(gauge(
        &t,
        node.memory_used_bytes,
        node.memory_capacity_bytes,
        if wide { 10 } else { 6 },
    ));
    resources.push(Span::styled(
        format!("  CPU {:.0}% of {}", node.cpu_load * 100.0, node.cpu_count),
        t.data(),
    ));
    resources.push(Span::styled("  GPU ", theme.faint()));
    resources.extend(gpu_gauges(&t, &node.gpus, true).spans);
    frame.render_widget(
        Paragraph::new(vec![Line::from(head), Line::from(resources)]).wrap(Wrap { trim: false }),
        about,
    );

    let columns: Vec<(&str, u16)> = if wide {
        vec![
            ("MODEL", 24),
            ("VERSION", 8),
            ("STATE", 10),
            ("MEMORY", 8),
            ("IN-FLIGHT", 9),
            ("QUEUE", 6),
            ("BATCH", 6),
            ("TTL LEFT", 8),
            ("REQ/S", 7),
            ("ERROR", 0),
        ]
    } else {
        vec![
            ("MODEL", 18),
            ("STATE", 9),
            ("MEM", 6),
            ("INFL", 4),
            ("Q", 3),
            ("BATCH", 5),
            ("TTL", 6),
            ("REQ/S", 6),
            ("ERROR", 0),
        ]
    };
    let models = app.visible_detail_models();
    let height = table_area.height.saturating_sub(1) as usize;
    let (first, selected) = window(app.detail_cursor, models.len(), height);
    let rows = models
        .iter()
        .skip(first)
        .take(height)
        .map(|m| row(&t, m, wide));
    let header = Row::new(columns.iter().map(|(name, _)| *name)).style(theme.header());
    let empty = if app.filter.is_empty() {
        " no model loaded on this node"
    } else {
        " no model matches the filter"
    };
    let table = Table::new(rows, widths(&columns)).header(header);
    let selected = (!models.is_empty()).then_some(selected);
    draw_table(frame, table_area, table, selected, empty, theme);
}

fn row<'a>(theme: &Theme, m: &NodeModelView, wide: bool) -> Row<'a> {
    let mut cells = vec![Line::from(Span::styled(m.name.clone(), theme.data()))];
    if wide {
        cells.push(Line::from(Span::styled(m.version.clone(), theme.data())));
    }
    let ttl = match m.unloads_in_ms() {
        Some(ms) => format::duration_ms(i64::try_from(ms).unwrap_or(i64::MAX)),
        None => "-".to_string(),
    };
    let batch = if m.mean_batch_size > 0.0 {
        format!("{:.1}", m.mean_batch_size)
    } else {
        "-".to_string()
    };
    let memory = if m.memory_bytes == 0 {
        "-".to_string()
    } else {
        format::size(m.memory_bytes)
    };
    cells.extend([
        Line::from(Span::styled(
            model_state_word(m.state),
            model_state_style(theme, m.state),
        )),
        Line::from(Span::styled(memory, theme.data())).right_aligned(),
        Line::from(Span::styled(m.in_flight.to_string(), theme.data())).right_aligned(),
        Line::from(Span::styled(m.queue_length.to_string(), theme.data())).right_aligned(),
        Line::from(Span::styled(batch, theme.data())).right_aligned(),
        Line::from(Span::styled(ttl, theme.data())).right_aligned(),
        Line::from(Span::styled(format::rate(m.inferences_per_s), theme.data())).right_aligned(),
        Line::from(Span::styled(m.last_error.clone(), theme.bad())),
    ]);
    Row::new(cells)
}
