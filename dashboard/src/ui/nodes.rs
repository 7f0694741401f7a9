//! The nodes view: a row per node with its memory, load and traffic.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Row, Table};
use ratatui::Frame;

use herd_client::view::{self, GpuView, NodeView};
use herd_proto::herd::NodeState;

use super::{draw_table, format, state_word, window, Theme, WIDE};
use crate::app::App;

/// A node's state as a word.
pub(crate) fn node_state_word(state: NodeState) -> String {
    state_word(view::node_state(state))
}

pub(crate) fn state_style(theme: &Theme, state: NodeState) -> ratatui::style::Style {
    match state {
        NodeState::Up => theme.good(),
        NodeState::Down => theme.bad(),
        NodeState::Draining | NodeState::Suspect | NodeState::Resting => theme.warn(),
        NodeState::Unspecified => theme.faint(),
    }
}

/// A gauge with its figures: `████░░ 12/31G`.
pub(crate) fn gauge<'a>(theme: &Theme, used: u64, total: u64, width: usize) -> Vec<Span<'a>> {
    let fraction = format::fraction(used, total);
    vec![
        Span::styled(format::bar(fraction, width), theme.load(fraction)),
        Span::styled(format!(" {}", format::size_pair(used, total)), theme.data()),
    ]
}

/// Each GPU as a gauge: wide with figures, narrow as one cell and a percentage.
pub(crate) fn gpu_gauges<'a>(theme: &Theme, gpus: &[GpuView], wide: bool) -> Line<'a> {
    if gpus.is_empty() {
        return Line::from(Span::styled("-", theme.faint()));
    }
    let mut spans = Vec::new();
    for (i, gpu) in gpus.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" "));
        }
        let fraction = format::fraction(gpu.memory_used_bytes, gpu.memory_total_bytes);
        if wide {
            spans.extend(gauge(
                theme,
                gpu.memory_used_bytes,
                gpu.memory_total_bytes,
                4,
            ));
        } else {
            spans.push(Span::styled(
                format::level(fraction).to_string(),
                theme.load(fraction),
            ));
            spans.push(Span::styled(
                format!("{:.0}%", fraction * 100.0),
                theme.data(),
            ));
        }
    }
    Line::from(spans)
}

pub(crate) fn render(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let wide = area.width >= WIDE;
    let nodes = app.visible_nodes();
    // Fixed columns; the sparkline takes what is left.
    let fixed: Vec<(&str, u16)> = if wide {
        vec![
            ("NODE", 14),
            ("ADDRESS", 21),
            ("STATE", 8),
            ("RAM", 22),
            ("GPU MEMORY", 23),
            ("CPU", 4),
            ("MODELS", 6),
            ("REQ/S", 6),
            ("", 0),
            ("P50", 6),
            ("P99", 6),
            ("QUEUE", 5),
        ]
    } else {
        vec![
            ("NODE", 9),
            ("STATE", 5),
            ("RAM", 15),
            ("GPU", 9),
            ("CPU", 4),
            ("M", 2),
            ("REQ/S", 5),
            ("", 0),
            ("P50", 5),
            ("P99", 5),
            ("Q", 3),
        ]
    };
    let used: u16 = fixed.iter().map(|(_, w)| w).sum::<u16>() + fixed.len() as u16 - 1;
    let spark_width = area.width.saturating_sub(used).min(60);
    let widths: Vec<Constraint> = fixed
        .iter()
        .map(|(name, w)| Constraint::Length(if name.is_empty() { spark_width } else { *w }))
        .collect();
    let header = Row::new(fixed.iter().map(|(name, _)| {
        if name.is_empty() {
            format!("LAST {spark_width}s")
        } else {
            name.to_string()
        }
    }))
    .style(theme.header());

    let height = area.height.saturating_sub(1) as usize;
    let (first, selected) = window(app.node_cursor, nodes.len(), height);
    let rows = nodes
        .iter()
        .skip(first)
        .take(height)
        .map(|node| row(app, theme, node, wide, spark_width as usize));
    let empty = if app.filter.is_empty() {
        "no nodes have joined"
    } else {
        "no node matches the filter"
    };
    let selected = (!nodes.is_empty()).then_some(selected);
    let table = Table::new(rows, widths).header(header);
    draw_table(frame, area, table, selected, empty, theme);
}

fn row<'a>(app: &App, theme: &Theme, node: &NodeView, wide: bool, spark_width: usize) -> Row<'a> {
    let down = node.state == NodeState::Down;
    // A down node's figures are its last report: faint, and no rates.
    let t = if down {
        Theme::faint_theme(theme)
    } else {
        *theme
    };
    let ram = Line::from(gauge(
        &t,
        node.memory_used_bytes,
        node.memory_capacity_bytes,
        if wide { 10 } else { 5 },
    ));
    let rate = if down { None } else { node.requests_per_s };
    let spark = if down {
        String::new()
    } else {
        format::sparkline(app.node_history(&node.name), spark_width)
    };
    let mut cells: Vec<Line> = vec![Line::from(Span::styled(node.name.clone(), t.data()))];
    if wide {
        cells.push(Line::from(Span::styled(node.address.clone(), t.data())));
    }
    cells.extend([
        Line::from(Span::styled(
            node_state_word(node.state),
            state_style(theme, node.state),
        )),
        ram,
        gpu_gauges(&t, &node.gpus, wide),
        Line::from(Span::styled(
            format!("{:.0}%", node.cpu_load * 100.0),
            t.load(f64::from(node.cpu_load)),
        ))
        .right_aligned(),
        Line::from(Span::styled(node.loaded_models().to_string(), t.data())).right_aligned(),
        Line::from(Span::styled(format::rate(rate), t.data())).right_aligned(),
        Line::from(Span::styled(spark, t.accent())),
        Line::from(Span::styled(format::latency(node.latency_p50_us), t.data())).right_aligned(),
        Line::from(Span::styled(format::latency(node.latency_p99_us), t.data())).right_aligned(),
        Line::from(Span::styled(node.queue_length.to_string(), t.data())).right_aligned(),
    ]);
    Row::new(cells)
}

impl Theme {
    /// This theme with every colour turned faint, for rows of stale figures.
    pub(crate) fn faint_theme(theme: &Theme) -> Theme {
        Theme {
            stale: true,
            ..*theme
        }
    }
}
