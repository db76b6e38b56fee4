//! The layers' counters reach a `metrics` recorder, as an exporter would read them.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

type Values = Arc<Mutex<HashMap<String, f64>>>;

struct Series {
    key: String,
    values: Values,
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.values
            .lock()
            .unwrap()
            .insert(self.key.clone(), value as f64);
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.values.lock().unwrap().insert(self.key.clone(), value);
    }
}

struct MapRecorder(Values);

impl MapRecorder {
    fn series(&self, key: &Key) -> Arc<Series> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Series {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.0.clone(),
        })
    }
}

impl Recorder for MapRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_the_recorder_with_conventional_names() {
    let values: Values = Arc::default();
    metrics::set_global_recorder(MapRecorder(values.clone())).unwrap();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(Duration::from_millis(100))
        .recapture_at([])
        .sink(collect.clone())
        .build()
        .unwrap();
    let timebox = TimeboxLayer::builder(Duration::from_millis(300))
        .resolution(Duration::from_millis(10))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(Vigil::new().watchdog(watchdog.clone()).timebox(timebox));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/slow", &[]).await.0, 503);
    let value = |name: &str| values.lock().unwrap().get(name).copied();
    let published = wait_until(Duration::from_secs(5), || {
        value("vigil_hard_timeouts_total{instance=timebox-1}") == Some(1.0)
            && value("vigil_reports_total{instance=watchdog-1}") == Some(2.0)
    })
    .await;
    assert!(published, "{:#?}", values.lock().unwrap());
    assert_eq!(
        value("vigil_soft_timeouts_total{instance=timebox-1}"),
        Some(1.0)
    );
    assert!(value("vigil_requests_in_flight{instance=watchdog-1}").is_some());
}
