//! A dependency-free SVG chart of a `compare` report: for relay runs, latency percentiles (log
//! scale) and CPU per event by rate; for idle runs, RSS per socket by socket count. One line per
//! peer and measure.

use serde_json::Value;
use std::fmt::Write;

const W: f64 = 460.0;
const H: f64 = 300.0;
const PAD: f64 = 56.0;
const COLORS: [(&str, &str); 2] = [("callpay", "#c2410c"), ("socketio", "#1d4ed8")];

struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

fn color(peer: &str) -> &'static str {
    COLORS.iter().find(|(p, _)| *p == peer).map_or("#444", |(_, c)| c)
}

/// A shaded stretch of a timeline (a fault), from `.0` to `.1` on the x axis, named `.2`.
type Band = (f64, f64, String);

/// One panel at horizontal offset `x0`: axes, ticks, shaded bands, series and a legend.
#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    x0: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
    series: &[Series],
    bands: &[Band],
) {
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite() && *y > 0.0).collect();
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    let (x_min, x_max) = (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(0.0, f64::max));
    let (mut y_min, mut y_max) =
        (ys.iter().cloned().fold(f64::INFINITY, f64::min), ys.iter().cloned().fold(0.0, f64::max));
    if log_y {
        y_min = 10f64.powf(y_min.log10().floor());
        y_max = 10f64.powf(y_max.log10().ceil());
    } else {
        y_min = 0.0;
        y_max *= 1.1;
    }
    let fx = |x: f64| x0 + PAD + (x - x_min) / (x_max - x_min).max(1e-9) * (W - 2.0 * PAD);
    let fy = |y: f64| {
        let t = if log_y {
            (y.log10() - y_min.log10()) / (y_max.log10() - y_min.log10()).max(1e-9)
        } else {
            (y - y_min) / (y_max - y_min).max(1e-9)
        };
        H - PAD - t * (H - 2.0 * PAD)
    };
    let _ = write!(out, r#"<text x="{}" y="20" font-size="14" font-weight="bold">{title}</text>"#, x0 + PAD);
    let _ = write!(
        out,
        r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#333"/><line x1="{a}" y1="{d}" x2="{a}" y2="{b}" stroke="#333"/>"##,
        a = x0 + PAD,
        b = H - PAD,
        c = x0 + W - PAD,
        d = PAD
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{x_label}</text>"#,
        x0 + W / 2.0,
        H - 16.0
    );
    let _ = write!(
        out,
        r#"<text x="{x}" y="{y}" font-size="11" text-anchor="middle" transform="rotate(-90 {x} {y})">{y_label}</text>"#,
        x = x0 + 14.0,
        y = H / 2.0
    );
    for (i, (from, to, name)) in bands.iter().enumerate() {
        let (a, b) = (fx(*from), fx(*to).max(fx(*from) + 2.0));
        let _ = write!(
            out,
            r##"<rect x="{a:.1}" y="{top}" width="{w:.1}" height="{h}" fill="#fde68a" fill-opacity="0.6"/><text x="{a:.1}" y="{ty}" font-size="9" fill="#92400e">{name}</text>"##,
            top = PAD,
            w = b - a,
            h = H - 2.0 * PAD,
            ty = PAD - 4.0 - 10.0 * (i % 2) as f64,
        );
    }
    let mut xt: Vec<f64> = xs.clone();
    xt.sort_by(f64::total_cmp);
    xt.dedup();
    // A timeline has a point a second: label six evenly spaced ticks, not every point.
    if xt.len() > 12 {
        xt = (0..=5).map(|i| (x_min + (x_max - x_min) * i as f64 / 5.0).round()).collect();
    }
    for x in xt {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            fx(x),
            H - PAD + 14.0,
            short(x)
        );
    }
    let yt: Vec<f64> = if log_y {
        let mut v = Vec::new();
        let mut y = y_min;
        while y <= y_max * 1.0001 {
            v.push(y);
            y *= 10.0;
        }
        v
    } else {
        (0..=4).map(|i| y_min + (y_max - y_min) * i as f64 / 4.0).collect()
    };
    for y in yt {
        let _ = write!(
            out,
            r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#ddd"/><text x="{d}" y="{e}" font-size="10" text-anchor="end">{t}</text>"##,
            a = x0 + PAD,
            b = fy(y),
            c = x0 + W - PAD,
            d = x0 + PAD - 4.0,
            e = fy(y) + 3.0,
            t = short(y)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", fx(*x), fy(y.clamp(y_min, y_max))))
            .collect();
        let dash = if s.dashed { r#" stroke-dasharray="4 3""# } else { "" };
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let ly = PAD + 14.0 * i as f64;
        let _ = write!(
            out,
            r#"<line x1="{a}" y1="{ly}" x2="{b}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{d}" y="{e}" font-size="10">{l}</text>"#,
            a = x0 + PAD + 8.0,
            b = x0 + PAD + 28.0,
            c = s.color,
            d = x0 + PAD + 32.0,
            e = ly + 3.0,
            l = s.label
        );
    }
}

fn short(v: f64) -> String {
    if v >= 1000.0 && v % 1000.0 == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The chart for a report from `compare`.
pub fn svg(report: &Value) -> String {
    let results = report["results"].as_array().cloned().unwrap_or_default();
    let mut body = String::new();
    if report["scenario"] == "idle" {
        let series: Vec<Series> = results
            .iter()
            .map(|r| {
                let peer = r["peer"].as_str().unwrap_or_default();
                Series {
                    label: peer.to_owned(),
                    color: color(peer),
                    dashed: false,
                    points: r["idle"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|row| {
                            (
                                row["sockets"].as_f64().unwrap_or(0.0),
                                row["rss_per_socket_bytes"].as_f64().unwrap_or(0.0) / 1024.0,
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        panel(&mut body, 0.0, "RSS per idle socket", "sockets", "KiB per socket", false, &series, &[]);
    } else {
        let mut latency = Vec::new();
        let mut cpu = Vec::new();
        for r in &results {
            let peer = r["peer"].as_str().unwrap_or_default();
            let rows: Vec<&Value> = r["rates"].as_array().into_iter().flatten().collect();
            let pts = |key: &str| {
                rows.iter()
                    .map(|row| (row["rate"].as_f64().unwrap_or(0.0), row[key].as_f64().unwrap_or(f64::NAN)))
                    .collect()
            };
            latency.push(Series {
                label: format!("{peer} p99"),
                color: color(peer),
                dashed: false,
                points: pts("p99_ms"),
            });
            latency.push(Series {
                label: format!("{peer} p50"),
                color: color(peer),
                dashed: true,
                points: pts("p50_ms"),
            });
            cpu.push(Series {
                label: peer.to_owned(),
                color: color(peer),
                dashed: false,
                points: pts("cpu_us_per_event"),
            });
        }
        panel(&mut body, 0.0, "Relay latency (ms, log)", "events per second", "ms", true, &latency, &[]);
        panel(&mut body, W, "Server CPU per relayed event", "events per second", "µs per event", false, &cpu, &[]);
    }
    let width = if report["scenario"] == "idle" { W } else { 2.0 * W };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}<text x="8" y="{f}" font-size="9" fill="#666">{scenario} · {date} · {cpu}</text></svg>"##,
        h = H + 10.0,
        f = H + 6.0,
        scenario = report["scenario"].as_str().unwrap_or_default(),
        date = report["date"].as_str().unwrap_or_default(),
        cpu = report["machine"]["cpu"].as_str().unwrap_or_default().replace('&', "and"),
    )
}

/// The chart for a `scale` or `soak` report: relay latency and connected sockets second by
/// second, with the faults shaded; for a soak, the instances' RSS and open files too.
pub fn timeline_svg(report: &Value) -> String {
    let rows: Vec<&Value> = report["timeline"].as_array().into_iter().flatten().collect();
    let pts = |key: &str, scale: f64| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["t"].as_f64()?, r[key].as_f64()? * scale))).collect()
    };
    let bands: Vec<Band> = report["marks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] != "steady" && m["name"] != "churn")
        .map(|m| {
            (
                m["start_s"].as_f64().unwrap_or(0.0),
                m["end_s"].as_f64().unwrap_or(0.0),
                m["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let line = |label: &str, color: &'static str, dashed: bool, points: Vec<(f64, f64)>| Series {
        label: label.to_owned(),
        color,
        dashed,
        points,
    };
    let mut body = String::new();
    let latency = [line("p99", "#c2410c", false, pts("p99_ms", 1.0)), line("p50", "#c2410c", true, pts("p50_ms", 1.0))];
    panel(&mut body, 0.0, "Relay latency per second (ms, log)", "seconds", "ms", true, &latency, &bands);
    let sockets = [line("connected sockets", "#1d4ed8", false, pts("connected", 1.0))];
    panel(&mut body, W, "Connected sockets", "seconds", "sockets", false, &sockets, &bands);
    let mut panels = 2.0;
    if report["scenario"] == "soak" {
        let memory = [line("instances' RSS (MB)", "#15803d", false, pts("rss_bytes", 1e-6))];
        panel(&mut body, 2.0 * W, "Instances' RSS", "seconds", "MB", false, &memory, &bands);
        let files = [line("open files", "#7c3aed", false, pts("open_files", 1.0))];
        panel(&mut body, 3.0 * W, "Instances' open files", "seconds", "files", false, &files, &bands);
        panels = 4.0;
    }
    let width = panels * W;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}<text x="8" y="{f}" font-size="9" fill="#666">{scenario} · {sockets} sockets · {nodes} instances · {date} · {cpu}</text></svg>"##,
        h = H + 10.0,
        f = H + 6.0,
        scenario = report["scenario"].as_str().unwrap_or_default(),
        sockets = report["sockets"],
        nodes = report["nodes"],
        date = report["date"].as_str().unwrap_or_default(),
        cpu = report["machine"]["cpu"].as_str().unwrap_or_default().replace('&', "and"),
    )
}
