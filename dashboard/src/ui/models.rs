//! The models view: per model, its replicas, traffic and last placement.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Row, Table};
use ratatui::Frame;

use herd_client::view::ModelView;
use herd_proto::herd::ModelState;

use super::{draw_table, format, widths, window, Theme, WIDE};
use crate::app::App;

/// Replicas as `2 node-a node-b↑`: ready plain, loading ↑, unloading ↓, failed !.
fn replicas(model: &ModelView) -> String {
    let mut out = model.replicas.len().to_string();
    for r in &model.replicas {
        out.push(' ');
        out.push_str(&r.node);
        match r.state {
            ModelState::Ready => {}
            ModelState::Loading => out.push('↑'),
            ModelState::Unloading => out.push('↓'),
            ModelState::Failed => out.push('!'),
            ModelState::Available | ModelState::Unspecified => out.push('?'),
        }
    }
    out
}

fn last_placement(model: &ModelView) -> String {
    match &model.last_placement {
        None => "-".to_string(),
        Some(e) => {
            let mut out = format!("{} {}", format::clock(e.time_ms), e.kind);
            if !e.node.is_empty() {
                out.push(' ');
                out.push_str(&e.node);
            }
            if !e.message.is_empty() {
                out.push_str(": ");
                out.push_str(&e.message);
            }
            out
        }
    }
}

pub(crate) fn render(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let wide = area.width >= WIDE;
    let columns: Vec<(&str, u16)> = if wide {
        vec![
            ("MODEL", 22),
            ("MEMORY", 6),
            ("REPLICAS", 34),
            ("REQ/S", 6),
            ("P99", 6),
            ("COLD", 5),
            ("FAILS", 5),
            ("LAST PLACEMENT OR EVICTION", 0),
        ]
    } else {
        vec![
            ("MODEL", 14),
            ("REPLICAS", 17),
            ("REQ/S", 5),
            ("P99", 5),
            ("COLD", 4),
            ("LAST PLACEMENT", 0),
        ]
    };
    let models = app.visible_models();
    let height = area.height.saturating_sub(1) as usize;
    let (first, selected) = window(app.model_cursor, models.len(), height);
    let rows = models.iter().skip(first).take(height).map(|m| {
        let mut cells = vec![Line::from(Span::styled(m.name.clone(), theme.data()))];
        if wide {
            cells.push(
                Line::from(Span::styled(format::size(m.memory_bytes), theme.data()))
                    .right_aligned(),
            );
        }
        let replica_style = if m.replicas.is_empty() {
            theme.faint()
        } else if m.is_loaded() {
            theme.good()
        } else {
            theme.warn()
        };
        cells.extend([
            Line::from(Span::styled(replicas(m), replica_style)),
            Line::from(Span::styled(format::rate(m.requests_per_s), theme.data())).right_aligned(),
            Line::from(Span::styled(
                format::latency(m.latency_p99_us),
                theme.data(),
            ))
            .right_aligned(),
            Line::from(Span::styled(m.cold_starts.to_string(), theme.data())).right_aligned(),
        ]);
        if wide {
            let style = if m.failures_total > 0 {
                theme.bad()
            } else {
                theme.data()
            };
            cells.push(
                Line::from(Span::styled(m.failures_total.to_string(), style)).right_aligned(),
            );
        }
        cells.push(Line::from(Span::styled(last_placement(m), theme.faint())));
        Row::new(cells)
    });
    let header = Row::new(columns.iter().map(|(name, _)| *name)).style(theme.header());
    let empty = if app.filter.is_empty() {
        "no model in the catalog"
    } else {
        "no model matches the filter"
    };
    let selected = (!models.is_empty()).then_some(selected);
    let table = Table::new(rows, widths(&columns)).header(header);
    draw_table(frame, area, table, selected, empty, theme);
}
