//! Scenario `list`: LIST with a filter (city EQUAL), a sort (streetNumber) and a page (20 from
//! 100) on the address data set, over the hub's WebSocket, against SQLite in memory with an
//! index on city running the same query in-process.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::data::{self, Address, Rng};
use crate::hub::{self, Hub};
use crate::report::{num, times, Table};
use crate::restart::{self, Loaded};
use crate::stats::{self, ratio, round, Acc, Figures, Sample, Window};
use crate::{ws, Plan, Res};

const PAGE_SIZE: i64 = 20;
const PAGE_FROM: i64 = 100;
const COUNT_SQL: &str = "SELECT count(*) FROM address WHERE city = ?1";
const PAGE_SQL: &str = "SELECT id, streetName, streetNumber, streetLitteral, postalCode, city, countryCode, latitude, longitude \
     FROM address WHERE city = ?1 ORDER BY streetNumber LIMIT 20 OFFSET 100";

/// The order in which queries visit the cities (fixed seed).
fn city_sequence() -> Vec<String> {
    let mut rng = Rng::new(data::SEED ^ 0x4C15_7000);
    (0..4096)
        .map(|_| data::city(rng.below(data::CITIES as u64) as usize))
        .collect()
}

pub async fn run(plan: &Plan, bin: &Path, loaded: Option<Loaded>) -> Res<Value> {
    let n = plan.objects;
    println!("== list: LIST city EQUAL + sort streetNumber ASC + page 20 from 100, on {n} address objects");
    let loaded = match loaded {
        Some(l) => l,
        None => restart::fresh(plan, bin).await?,
    };
    let Loaded { hub, addrs, .. } = &loaded;
    let cities = city_sequence();

    // SQLite in memory: the same rows, an index on city.
    let rows = addrs.clone();
    let (db, build_secs) = tokio::task::spawn_blocking(move || -> Res<(Connection, f64)> {
        let t = Instant::now();
        let db = sqlite_load(&rows)?;
        db.execute_batch("CREATE INDEX address_city ON address(city)")?;
        Ok((db, t.elapsed().as_secs_f64()))
    })
    .await??;

    // Same answers: count and the page's sort keys (ties may come in another order: the hub
    // breaks them by creation order, and loading ran on several sockets at once).
    let mut sock = ws::connect(hub.addr).await?;
    let (db, checked) = {
        let mut checked = Vec::new();
        for city in cities.iter().take(5) {
            let reply = ws::call_ok(
                &mut sock,
                &json!({"requestid": 1, "endpoint": data::ENDPOINT, "method": "LIST",
                        "parameters": data::list_parameters(city)}),
            )
            .await?;
            let hub_count = reply["count"].as_i64().unwrap_or(-1);
            let hub_keys: Vec<i64> = reply["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o["streetNumber"].as_i64())
                        .collect()
                })
                .unwrap_or_default();
            checked.push((city.clone(), hub_count, hub_keys));
        }
        let db = tokio::task::spawn_blocking(move || -> Res<Connection> {
            for (city, hub_count, hub_keys) in &checked {
                let count: i64 = db.query_row(COUNT_SQL, [city], |r| r.get(0))?;
                let mut stmt = db.prepare(PAGE_SQL)?;
                let keys: Vec<i64> = stmt
                    .query_map([city], |r| r.get::<_, i64>(2))?
                    .collect::<Result<_, _>>()?;
                drop(stmt);
                if count != *hub_count || keys != *hub_keys {
                    return Err(format!(
                        "flowhub and SQLite disagree on city {city:?}: count {hub_count} vs {count}, streetNumbers {hub_keys:?} vs {keys:?}"
                    )
                    .into());
                }
            }
            Ok(db)
        })
        .await??;
        (db, 5)
    };
    let _ = sock.close(None).await;

    // Warm-up outside the window: the hub indexes the fields a LIST uses on first use.
    let frames: Vec<String> = (0..data::CITIES)
        .map(|i| {
            json!({"type": "call", "requestid": i, "endpoint": data::ENDPOINT, "method": "LIST",
                   "parameters": data::list_parameters(&data::city(i))})
            .to_string()
        })
        .collect();
    {
        let mut sock = ws::connect(hub.addr).await?;
        for f in &frames {
            let reply = ws::call(&mut sock, f.clone()).await?;
            if !ws::succeeded(&reply) {
                return Err(ws::failure("LIST", &reply));
            }
        }
    }
    let frame_of: Vec<String> = cities
        .iter()
        .map(|c| {
            json!({"type": "call", "requestid": 1, "endpoint": data::ENDPOINT, "method": "LIST",
                   "parameters": data::list_parameters(c)})
            .to_string()
        })
        .collect();

    let (mut a1, mut a8, mut asq) = (Acc::default(), Acc::default(), Acc::default());
    let mut db = db;
    for _ in 0..plan.rounds {
        a1.add(hub_queries(hub, &frame_of, 1, plan).await?);
        a8.add(hub_queries(hub, &frame_of, 8, plan).await?);
        let p = plan.clone();
        let seq = cities.clone();
        let (back, sample) = tokio::task::spawn_blocking(move || -> Res<(Connection, Sample)> {
            let s = sqlite_queries(&db, &seq, &p)?;
            Ok((db, s))
        })
        .await??;
        db = back;
        asq.add(sample);
    }
    let (hub1, hub8, sqlite_city) = (a1.figures(), a8.figures(), asq.figures());
    let p = plan.clone();
    let seq = cities.clone();
    let sqlite_composite = tokio::task::spawn_blocking(move || -> Res<Figures> {
        db.execute_batch(
            "DROP INDEX address_city; CREATE INDEX address_city_number ON address(city, streetNumber)",
        )?;
        let mut acc = Acc::default();
        for _ in 0..p.rounds {
            acc.add(sqlite_queries(&db, &seq, &p)?);
        }
        Ok(acc.figures())
    })
    .await??;
    let rss = hub.rss_kib();
    loaded.stop().await;

    println!(
        "flowhub: over its WebSocket (JSON frames, reply parsed by the client), closed loop per socket, hub CPU from /proc; {} rounds of {:.1} s per system, taking turns;",
        plan.rounds,
        plan.window.as_secs_f64()
    );
    println!(
        "SQLite: in memory, in the bench process (no socket, no serialization), one connection, prepared statements, count + page per query, CPU of its thread;"
    );
    println!(
        "both: the same {} cities in the same fixed-seed order, ~{} matches per city; answers checked equal on {checked} cities; SQLite loaded in {:.1} s",
        data::CITIES,
        n / data::CITIES,
        build_secs
    );
    let mut t = Table::new(
        &[
            "system",
            "in flight",
            "queries/s",
            "p50 µs",
            "p99 µs",
            "CPU µs/query",
        ],
        1,
    );
    let row = |t: &mut Table, name: &str, inflight: usize, f: &Figures| {
        t.row(vec![
            name.into(),
            inflight.to_string(),
            num(Some(f.per_sec())),
            num(Some(f.p50_us)),
            num(Some(f.p99_us)),
            num(f.cpu_us_per_op),
        ])
    };
    row(&mut t, "flowhub over WebSocket (hub process CPU)", 1, &hub1);
    row(&mut t, "flowhub over WebSocket (hub process CPU)", 8, &hub8);
    row(
        &mut t,
        "baseline: SQLite in memory, index (city)",
        1,
        &sqlite_city,
    );
    row(
        &mut t,
        "info: SQLite, index (city, streetNumber)",
        1,
        &sqlite_composite,
    );
    let q_ratio = ratio(Some(hub1.per_sec()), Some(sqlite_city.per_sec()));
    let q8_ratio = ratio(Some(hub8.per_sec()), Some(sqlite_city.per_sec()));
    let cpu_ratio = ratio(hub1.cpu_us_per_op, sqlite_city.cpu_us_per_op);
    t.note(format!(
        "queries/s flowhub/SQLite: {} (1 in flight), {} (8 in flight vs SQLite's 1 thread);  CPU per query flowhub/SQLite: {}",
        times(q_ratio),
        times(q8_ratio),
        times(cpu_ratio)
    ));
    t.note(format!(
        "hub RSS with {n} objects and its indexes: {} MiB; no peer for this scenario",
        num(rss.map(|k| k as f64 / 1024.0))
    ));
    t.print();
    let met = q_ratio.map(|r| r >= 1.0);
    println!(
        "target: no slower than SQLite in memory with the same index (queries/s, 1 in flight): {}",
        match met {
            Some(true) => format!("met ({})", times(q_ratio)),
            Some(false) => format!("MISSED ({})", times(q_ratio)),
            None => "not measured".into(),
        }
    );
    Ok(json!({
        "scenario": "list",
        "objects": n,
        "query": {
            "filter": "city EQUAL <one of 200>",
            "sort": "streetNumber ASC",
            "page_size": PAGE_SIZE,
            "page_from": PAGE_FROM,
            "matches_per_city": n / data::CITIES,
        },
        "window_s": plan.window.as_secs_f64(),
        "rounds": plan.rounds,
        "flowhub": {"in_flight_1": hub1.json(), "in_flight_8": hub8.json(), "hub_rss_kib": rss,
                    "how": "over the WebSocket, JSON, closed loop per socket, hub process CPU"},
        "baseline": {"name": "SQLite in memory (rusqlite bundled), index on city",
                     "sqlite_version": rusqlite::version(),
                     "how": "in-process, one connection, count + page per query, CPU of its thread",
                     "figures": sqlite_city.json(), "load_seconds": round(build_secs, 3)},
        "baseline_composite_index": {"name": "SQLite in memory, index on (city, streetNumber)",
                                     "figures": sqlite_composite.json()},
        "peer": null,
        "ratio_flowhub_to_baseline": q_ratio,
        "ratio_flowhub_8_in_flight_to_baseline": q8_ratio,
        "ratio_cpu_per_query_flowhub_to_baseline": cpu_ratio,
        "target": {"queries_per_sec_vs_baseline_at_least": 1.0, "met": met},
    }))
}

/// `sockets` WebSockets, each a closed loop of LIST over the city sequence.
async fn hub_queries(hub: &Hub, frames: &[String], sockets: usize, plan: &Plan) -> Res<Sample> {
    let mut socks = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        socks.push(ws::connect(hub.addr).await?);
    }
    let window = Window::new(plan.warmup, plan.window);
    let mut tasks = Vec::with_capacity(sockets);
    for (s, mut sock) in socks.into_iter().enumerate() {
        let frames = frames.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut h = stats::histogram();
            let mut k = s * 97;
            while window.running() {
                let frame = frames[k % frames.len()].clone();
                k += 1;
                let began = Instant::now();
                let reply = ws::call(&mut sock, frame).await?;
                if !ws::succeeded(&reply) {
                    return Err(ws::failure("LIST", &reply));
                }
                // A client reads what it asked for.
                let v: Value = serde_json::from_str(&reply)?;
                if v["data"].as_array().map_or(0, Vec::len) as i64 > PAGE_SIZE {
                    return Err("LIST returned more than a page".into());
                }
                window.record(&mut h, began);
            }
            let _ = sock.close(None).await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(h)
        }));
    }
    window.collect(tasks, || hub.cpu()).await
}

fn sqlite_load(addrs: &[Address]) -> Res<Connection> {
    let mut db = Connection::open_in_memory()?;
    db.execute_batch(
        "CREATE TABLE address (id TEXT PRIMARY KEY, streetName TEXT, streetNumber INTEGER, \
         streetLitteral TEXT, postalCode TEXT, city TEXT, countryCode TEXT, latitude REAL, longitude REAL)",
    )?;
    let tx = db.transaction()?;
    {
        let mut ins =
            tx.prepare("INSERT INTO address VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?;
        for a in addrs {
            ins.execute(rusqlite::params![
                a.id,
                a.street_name,
                a.street_number,
                a.street_litteral,
                a.postal_code,
                a.city,
                a.country_code,
                a.latitude,
                a.longitude
            ])?;
        }
    }
    tx.commit()?;
    Ok(db)
}

/// What a caller of SQLite gets back per row.
#[allow(dead_code)] // read so that SQLite's work is not optimized away
struct Row {
    id: String,
    street_name: String,
    street_number: i64,
    street_litteral: String,
    postal_code: String,
    city: String,
    country_code: String,
    latitude: f64,
    longitude: f64,
}

/// One thread, closed loop: count + page per query, every column of the page read.
fn sqlite_queries(db: &Connection, cities: &[String], plan: &Plan) -> Res<Sample> {
    let mut count_stmt = db.prepare(COUNT_SQL)?;
    let mut page_stmt = db.prepare(PAGE_SQL)?;
    let mut h = stats::histogram();
    let window = Window::new(plan.warmup, plan.window);
    let mut cpu0 = None;
    let mut k = 0usize;
    let mut rows_read = 0usize;
    while window.running() {
        if cpu0.is_none() && Instant::now() >= window.start {
            cpu0 = hub::cpu_seconds("/proc/thread-self/stat");
        }
        let city = &cities[k % cities.len()];
        k += 1;
        let began = Instant::now();
        let count: i64 = count_stmt.query_row([city], |r| r.get(0))?;
        let page: Vec<Row> = page_stmt
            .query_map([city], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    street_name: r.get(1)?,
                    street_number: r.get(2)?,
                    street_litteral: r.get(3)?,
                    postal_code: r.get(4)?,
                    city: r.get(5)?,
                    country_code: r.get(6)?,
                    latitude: r.get(7)?,
                    longitude: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        window.record(&mut h, began);
        rows_read += page.len() + usize::from(count > 0);
    }
    let cpu1 = hub::cpu_seconds("/proc/thread-self/stat");
    std::hint::black_box(rows_read);
    Ok(Sample::new(
        h,
        window.secs(),
        cpu1.zip(cpu0).map(|(a, b)| a - b),
    ))
}
