//! Address-like objects from a fixed seed, the same on every run and every machine.

use serde_json::{json, Value};

/// SplitMix64: tiny, fast, and fixed forever (a crate's generator may change between
/// versions; the data set must not).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub const SEED: u64 = 0x5EED_F10B_0001;
/// The endpoint the address objects live on.
pub const ENDPOINT: &str = "address/address";
pub const CITIES: usize = 200;

const CITY_HEAD: [&str; 20] = [
    "Env", "Göte", "Lund", "Mal", "Upp", "Norr", "Sunds", "Kal", "Öster", "Väster", "Ny", "Gam",
    "Berg", "Sjö", "Å", "Skog", "Hav", "Ljus", "Stor", "Lill",
];
const CITY_TAIL: [&str; 10] = [
    "ik", "fred", "by", "köping", "sala", "borg", "vall", "hamn", "ås", "stad",
];
const STREET_HEAD: [&str; 30] = [
    "Larss",
    "Övre Åker",
    "Kyrk",
    "Skol",
    "Stations",
    "Strand",
    "Björk",
    "Ek",
    "Tall",
    "Gran",
    "Kvarn",
    "Smedje",
    "Hamn",
    "Park",
    "Träd",
    "Dal",
    "Ängs",
    "Lind",
    "Rönn",
    "Sjö",
    "Back",
    "Berg",
    "Mosse",
    "Fjäll",
    "Brunns",
    "Torg",
    "Slotts",
    "Prost",
    "Kungs",
    "Drottning",
];
const STREET_TAIL: [&str; 8] = [
    "gatan", " Gata", "vägen", "allén", "stigen", "gränd", "backen", "torget",
];
const COUNTRIES: [&str; 4] = ["SE", "NO", "DK", "FI"];

/// The `i`-th of the 200 city names.
pub fn city(i: usize) -> String {
    format!(
        "{}{}",
        CITY_HEAD[i / CITY_TAIL.len() % CITY_HEAD.len()],
        CITY_TAIL[i % CITY_TAIL.len()]
    )
}

/// One address.
#[derive(Debug, Clone)]
pub struct Address {
    pub id: String,
    pub street_name: String,
    pub street_number: i64,
    pub street_litteral: String,
    pub postal_code: String,
    pub city: String,
    pub country_code: &'static str,
    pub latitude: f64,
    pub longitude: f64,
}

impl Address {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "streetName": self.street_name,
            "streetNumber": self.street_number,
            "streetLitteral": self.street_litteral,
            "postalCode": self.postal_code,
            "city": self.city,
            "countryCode": self.country_code,
            "latitude": self.latitude,
            "longitude": self.longitude,
        })
    }
}

/// The first `n` addresses of the fixed data set.
pub fn addresses(n: usize) -> Vec<Address> {
    let mut rng = Rng::new(SEED);
    let cities: Vec<String> = (0..CITIES).map(city).collect();
    (0..n)
        .map(|i| {
            let street = format!(
                "{}{}",
                STREET_HEAD[rng.below(STREET_HEAD.len() as u64) as usize],
                STREET_TAIL[rng.below(STREET_TAIL.len() as u64) as usize]
            );
            let litteral = match rng.below(4) {
                0 => ["A", "B", "C", "G"][rng.below(4) as usize].to_string(),
                _ => String::new(),
            };
            Address {
                id: format!("addr-{i:07}"),
                street_name: street,
                street_number: 1 + rng.below(250) as i64,
                street_litteral: litteral,
                postal_code: format!("{:05}", 10_000 + rng.below(90_000)),
                city: cities[rng.below(CITIES as u64) as usize].clone(),
                country_code: COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize],
                latitude: ((55.0 + rng.unit() * 14.0) * 1e6).round() / 1e6,
                longitude: ((11.0 + rng.unit() * 13.0) * 1e6).round() / 1e6,
            }
        })
        .collect()
}

/// The CREATE frames that load `addrs` into a hub.
pub fn create_frames(addrs: &[Address]) -> Vec<String> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "type": "call",
                "requestid": i,
                "endpoint": ENDPOINT,
                "method": "CREATE",
                "data": a.json(),
            })
            .to_string()
        })
        .collect()
}

/// The parameters of the measured LIST: city EQUAL, sorted by streetNumber, 20 from 100.
pub fn list_parameters(city: &str) -> Value {
    json!({
        "condition": true,
        "condition.values": {
            "items": [{"key": "city", "operator": "EQUAL", "value": city}],
            "subgroups": [],
            "logic": "AND"
        },
        "sorting": true,
        "sorting.by": "streetNumber",
        "sorting.order": "ASC",
        "pagination": true,
        "pagination.size": 20,
        "pagination.from": 100
    })
}
