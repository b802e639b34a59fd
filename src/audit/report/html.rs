//! The HTML report: one self-contained file (inline CSS, no script, no
//! external resource), readable printed, with a timeline of sessions per
//! container and per day drawn as SVG here. The template
//! (`templates/audit/report.html`) is compiled and auto-escaped by askama;
//! never builds HTML from strings here, never links a script.

use askama::Template;

use super::AuditReport;

/// Width of the container-name column of the timeline, px.
const LABEL_WIDTH: u32 = 160;
/// Height of one container's row, px.
const ROW_HEIGHT: u32 = 30;
/// Tallest bar, px.
const BAR_MAX: u32 = 20;
/// Room for the day labels under the rows, px.
const AXIS_HEIGHT: u32 = 34;
/// Widest the day columns together may be, px.
const PLOT_WIDTH: u32 = 720;

/// One bar of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bar {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    /// The count, shown above the bar (centred) when there is room.
    label: Option<String>,
    /// The bar's centre, for the count.
    centre: u32,
    /// The tooltip: `web1, 2026-12-01: 3 sessions`.
    title: String,
}

/// One text of the timeline (container names, day labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Label {
    x: u32,
    y: u32,
    anchor: &'static str,
    text: String,
}

/// The timeline's geometry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Chart {
    width: u32,
    height: u32,
    bars: Vec<Bar>,
    labels: Vec<Label>,
    /// Horizontal grid lines, one per row (y).
    rules: Vec<u32>,
}

/// Lays out `report.timeline`: one row per container, one column per day,
/// bar heights proportional to the day's sessions.
pub(super) fn chart(report: &AuditReport) -> Chart {
    let t = &report.timeline;
    let days = t.days.len().max(1) as u32;
    let column = (PLOT_WIDTH / days).clamp(3, 40);
    let max = t
        .rows
        .iter()
        .flat_map(|r| r.counts.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = Chart {
        width: LABEL_WIDTH + column * days + 20,
        height: ROW_HEIGHT * t.rows.len() as u32 + AXIS_HEIGHT,
        ..Chart::default()
    };
    for (r, row) in t.rows.iter().enumerate() {
        let base = ROW_HEIGHT * (r as u32 + 1);
        out.rules.push(base);
        out.labels.push(Label {
            x: LABEL_WIDTH - 8,
            y: base - 8,
            anchor: "end",
            text: row.container.chars().take(24).collect(),
        });
        for (d, &count) in row.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let height = (count * BAR_MAX).div_ceil(max).max(2);
            let x = LABEL_WIDTH + column * d as u32 + 1;
            let width = column.saturating_sub(2).max(1);
            out.bars.push(Bar {
                x,
                y: base - height,
                width,
                centre: x + width / 2,
                height,
                label: (column >= 14).then(|| count.to_string()),
                title: format!(
                    "{}, {}: {count} session{}",
                    row.container,
                    t.days.get(d).map(String::as_str).unwrap_or(""),
                    if count == 1 { "" } else { "s" }
                ),
            });
        }
    }
    // Days as `MM-DD` (the year is in the period above), centred under
    // their column, one every few columns so that they are at least 40 px
    // apart (a label is about 30 px wide).
    let every = 40u32.div_ceil(column).max(1) as usize;
    let axis = ROW_HEIGHT * t.rows.len() as u32 + 16;
    for (d, day) in t.days.iter().enumerate().step_by(every) {
        out.labels.push(Label {
            x: LABEL_WIDTH + column * d as u32 + column / 2,
            y: axis,
            anchor: "middle",
            text: day.get(5..).unwrap_or(day).to_string(),
        });
    }
    out
}

#[derive(Template)]
#[template(path = "audit/report.html")]
struct ReportPage<'a> {
    r: &'a AuditReport,
    chart: Chart,
}

/// The report as one HTML document.
///
/// # Errors
/// The template fails to render (askama's error).
pub(super) fn render_html(report: &AuditReport) -> Result<String, askama::Error> {
    ReportPage {
        r: report,
        chart: chart(report),
    }
    .render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::super::{Timeline, TimelineRow};
    use super::*;

    #[test]
    fn bars_grow_with_the_count_and_name_their_day() {
        let report = AuditReport {
            timeline: Timeline {
                days: vec!["2026-12-01".into(), "2026-12-02".into()],
                rows: vec![
                    TimelineRow {
                        container: "db1".into(),
                        counts: vec![0, 4],
                    },
                    TimelineRow {
                        container: "web1".into(),
                        counts: vec![2, 1],
                    },
                ],
                truncated: false,
            },
            ..AuditReport::default()
        };
        let c = chart(&report);
        assert_eq!(c.bars.len(), 3);
        assert_eq!(c.bars[0].height, BAR_MAX);
        assert_eq!(c.bars[0].title, "db1, 2026-12-02: 4 sessions");
        assert_eq!(c.bars[1].height, BAR_MAX / 2);
        assert_eq!(c.bars[2].title, "web1, 2026-12-02: 1 session");
        assert_eq!(c.bars[0].label.as_deref(), Some("4"));
        assert_eq!(c.height, 2 * ROW_HEIGHT + AXIS_HEIGHT);
        let html = render_html(&report).unwrap();
        assert_eq!(html.matches("<rect class=\"bar\"").count(), 3);
    }

    #[test]
    fn hostile_text_is_escaped() {
        let report = AuditReport {
            gateway: "<script>alert(1)</script>".into(),
            ..AuditReport::default()
        };
        let html = render_html(&report).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || html.contains("&lt;script&gt;")
        );
    }
}
