//! Rendering tests: the screen drawn into ratatui's `TestBackend`, kept as insta snapshots
//! at 80×24 and 160×48.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use tokio::time::Instant;

use crate::app::App;
use crate::fixtures;
use crate::ui;

/// The fixture cluster after 20 s of updates, so rates and sparklines have data.
fn cluster_app() -> App {
    let now = Instant::now();
    let mut app = App::new("127.0.0.1:8001", true, now);
    for step in 0..=20 {
        app.apply_update(fixtures::cluster(step), now);
    }
    app
}

fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|frame| ui::render(frame, app)).expect("draw");
    terminal.backend().to_string()
}

fn press(app: &mut App, code: KeyCode) {
    let _ = app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

#[test]
fn nodes_80x24() {
    insta::assert_snapshot!(screen(&cluster_app(), 80, 24));
}

#[test]
fn nodes_160x48() {
    insta::assert_snapshot!(screen(&cluster_app(), 160, 48));
}

#[test]
fn disconnected_80x24() {
    let mut app = cluster_app();
    app.on_disconnected(
        "transport error: connection refused",
        Duration::from_secs(4),
        app.now,
    );
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn disconnected_160x48() {
    let mut app = cluster_app();
    app.on_disconnected(
        "transport error: connection refused",
        Duration::from_secs(4),
        app.now,
    );
    insta::assert_snapshot!(screen(&app, 160, 48));
}

#[test]
fn never_connected_80x24() {
    let now = Instant::now();
    let mut app = App::new("127.0.0.1:8001", false, now);
    app.on_disconnected(
        "transport error: connection refused",
        Duration::from_secs(1),
        now,
    );
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn node_detail_80x24() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Enter); // node-a
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn node_detail_160x48() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Enter); // node-b
    insta::assert_snapshot!(screen(&app, 160, 48));
}

#[test]
fn models_80x24() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Tab);
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn models_160x48() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Tab);
    insta::assert_snapshot!(screen(&app, 160, 48));
}

#[test]
fn help_80x24() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn why_popup_100x30() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Char('w'));
    let model = app.why.as_ref().map(|(m, _)| m.clone()).expect("asked");
    let answer = herd_proto::herd::ExplainModelResponse {
        model: model.clone(),
        memory_bytes: 1 << 30,
        policy: "spread".into(),
        target_replicas: 1,
        replicas: 1,
        pools: vec![herd_proto::herd::PoolFit {
            node: "node-a".into(),
            device: "cpu".into(),
            state: herd_proto::herd::NodeState::Up as i32,
            budget_bytes: 8 << 30,
            free_bytes: 6 << 30,
            fits: true,
            has_replica: true,
            verdict: "holds a replica".into(),
            ..Default::default()
        }],
        next: "no node can hold another replica".into(),
    };
    app.on_why(model, Ok(herd_client::why::why_table(&answer, false)));
    insta::assert_snapshot!(screen(&app, 100, 30));
}

#[test]
fn confirm_drain_80x24() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char('d'));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn filter_80x24() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Char('/'));
    press(&mut app, KeyCode::Char('b'));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn no_color_draws_without_colours() {
    let now = Instant::now();
    let mut app = App::new("127.0.0.1:8001", false, now);
    for step in 0..=3 {
        app.apply_update(fixtures::cluster(step), now);
    }
    for stale in [false, true] {
        if stale {
            app.on_disconnected("refused", Duration::from_secs(2), now);
        }
        let mut terminal = Terminal::new(TestBackend::new(160, 48)).expect("test terminal");
        terminal
            .draw(|frame| ui::render(frame, &app))
            .expect("draw");
        let buffer = terminal.backend().buffer();
        assert!(buffer
            .content()
            .iter()
            .all(|cell| cell.fg == ratatui::style::Color::Reset
                && cell.bg == ratatui::style::Color::Reset));
    }
}

#[test]
fn tiny_terminals_do_not_panic() {
    let app = cluster_app();
    for (w, h) in [(1, 1), (20, 5), (40, 10), (79, 23), (300, 100)] {
        let _ = screen(&app, w, h);
    }
}

#[test]
fn tiny_terminals_with_the_why_popup_open_do_not_panic() {
    let mut app = cluster_app();
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Char('w'));
    let model = app.why.as_ref().map(|(m, _)| m.clone()).expect("asked");
    app.on_why(
        model,
        Ok("a line wider than a tiny terminal\nand another".into()),
    );
    for (w, h) in [(1, 1), (20, 5), (39, 10), (79, 23)] {
        let _ = screen(&app, w, h);
    }
}

/// CPU time this thread has used, from the scheduler's accounting; wall time elsewhere.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time per update applied, for 40 snapshots of 100 nodes and 1,000 models.
fn measure_apply(all_new: bool) -> Duration {
    let now = Instant::now();
    let mut app = App::new("127.0.0.1:8001", true, now);
    let updates: Vec<_> = (0..40)
        .map(|s| fixtures::large_cluster(100, 1_000, s, all_new))
        .collect();
    let count = updates.len() as u32;
    let wall = std::time::Instant::now();
    let cpu = thread_cpu_time();
    for update in updates {
        app.apply_update(update, now);
    }
    let spent = thread_cpu_time()
        .zip(cpu)
        .map(|(b, a)| b - a)
        .unwrap_or(wall.elapsed());
    spent / count
}

/// The cost of a 100-node, 1,000-model cluster: run by hand, in release:
/// `cargo test -p herd-dashboard --release --lib -- --ignored --nocapture measure_large_cluster`
#[test]
#[ignore = "a measurement, run by hand in release"]
fn measure_large_cluster() {
    let apply_typical = measure_apply(false);
    let apply_worst = measure_apply(true);

    let now = Instant::now();
    let mut app = App::new("127.0.0.1:8001", true, now);
    for s in 0..40 {
        app.apply_update(fixtures::large_cluster(100, 1_000, s, false), now);
    }
    let mut terminal = Terminal::new(TestBackend::new(160, 48)).expect("test terminal");
    let frames = 400u32;
    let wall = std::time::Instant::now();
    let cpu = thread_cpu_time();
    for i in 0..frames {
        // Each view in turn, as a user would switch between them.
        if i % 100 == 0 {
            press(&mut app, KeyCode::Tab);
        }
        terminal
            .draw(|frame| ui::render(frame, &app))
            .expect("draw");
    }
    let per_frame = thread_cpu_time()
        .zip(cpu)
        .map(|(b, a)| b - a)
        .unwrap_or(wall.elapsed())
        / frames;

    // Four snapshots and four redraws a second, the most the scheduler and the dashboard do.
    let share = |apply: Duration| (apply + per_frame).as_secs_f64() * 4.0 * 100.0;
    println!(
        "100 nodes, 1000 models, 160x48: render {per_frame:?}/frame; apply {apply_typical:?}/update \
         (a quarter of the histograms new) or {apply_worst:?} (all new); at 4 updates and \
         4 redraws a second: {:.2}% of one core ({:.2}% worst case)",
        share(apply_typical),
        share(apply_worst)
    );
}
