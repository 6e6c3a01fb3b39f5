//! Simulated SunSpec devices: the holding registers of a chain of models (integer models with
//! scale factors, float models, "not implemented" values), for tests/sunspec.rs and the live
//! Home Assistant test.

use super::modbus::FakeModbus;

/// Where the chains start ("SunS").
pub const BASE: u16 = 40000;

/// A string point's registers: `s` in ASCII, padded with NULs.
pub fn text(s: &str, registers: usize) -> Vec<u16> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(registers * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

pub fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, b as u16]
}

/// Model `id` of length `len`, zero but for `set` (offsets from its ID register).
pub fn model(id: u16, len: u16, set: &[(u16, &[u16])]) -> Vec<u16> {
    let mut m = vec![0u16; usize::from(len) + 2];
    m[0] = id;
    m[1] = len;
    for (offset, words) in set {
        for (i, w) in words.iter().enumerate() {
            m[usize::from(*offset) + i] = *w;
        }
    }
    m
}

/// The common model, 66 registers as the definition says, or 65 as Fronius sends it.
pub fn common_model(len: u16) -> Vec<u16> {
    let mut set: Vec<(u16, Vec<u16>)> = vec![
        (2, text("Fronius", 16)),
        (18, text("Symo 10.0-3-M", 16)),
        (42, text("1.2.3", 8)),
        (50, text("28471234", 16)),
        (66, vec![1]),
    ];
    if len == 66 {
        set.push((67, vec![0x8000]));
    }
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(1, len, &borrowed)
}

pub const NI16: u16 = 0x8000;
pub const NU16: u16 = 0xFFFF;

/// Inverter model 103: integers with scale factors (offsets from the model definition).
pub fn inverter_103() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    model(
        103,
        50,
        &[
            (2, &[1234, 411, 412, NU16, neg(-2)]), // A, AphA, AphB, AphC (not implemented), A_SF
            (7, &[4001, 4002, 4003, 2301, 2302, 2303, neg(-1)]), // PPV…, PhV…, V_SF
            (14, &[8450, 0]),                      // W, W_SF
            (16, &[5002, neg(-2)]),                // Hz, Hz_SF
            (18, &[8500, 0]),                      // VA, VA_SF
            (20, &[neg(-300), 0]),                 // VAr, VAr_SF
            (22, &[995, neg(-1)]),                 // PF, PF_SF
            (24, &[0x075B, 0xCD15, 1]),            // WH = 123456789, WH_SF = 1
            (27, &[2155, neg(-2), 4120, neg(-1), 8877, 0]), // DCA, DCA_SF, DCV, DCV_SF, DCW, DCW_SF
            (33, &[NI16, neg(-55), NI16, NI16, neg(-1)]), // TmpCab, TmpSnk, TmpTrns, TmpOt, Tmp_SF
            (38, &[4, NU16]),                      // St = MPPT, StVnd not implemented
        ],
    )
}

/// Meter model 203: integers with scale factors.
pub fn meter_203() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    model(
        203,
        105,
        &[
            (2, &[1050, 350, 351, 349, neg(-2)]), // A, AphA, AphB, AphC, A_SF
            (
                7,
                &[2305, 2301, 2302, 2303, 3995, 3991, 3992, 3993, neg(-1)],
            ), // PhV…, PPV…, V_SF
            (16, &[4998, neg(-2)]),               // Hz, Hz_SF
            (18, &[neg(-1234), neg(-400), neg(-417), neg(-417), 0]), // W…, W_SF
            (23, &[1300, 0, 0, 0, 0]),            // VA…, VA_SF
            (28, &[NI16, NI16, NI16, NI16, 0]),   // VAR… not implemented, VAR_SF
            (38, &[0x004C, 0x4B40]),              // TotWhExp = 5000000
            (46, &[0x0012, 0xD687]),              // TotWhImp = 1234567
            (54, &[0]),                           // TotWh_SF
        ],
    )
}

/// Inverter model 113: the same quantities as floats, other values.
pub fn inverter_113() -> Vec<u16> {
    let nan = [0x7FC0, 0];
    let f = f32_words;
    let mut set: Vec<(u16, Vec<u16>)> = Vec::new();
    for (offset, x) in [
        (2, 12.5),
        (4, 4.25),
        (6, 4.5),
        (10, 401.5),
        (12, 402.5),
        (14, 403.5),
        (16, 231.5),
        (18, 232.5),
        (20, 233.5),
        (22, 8000.0),
        (24, 49.95),
        (26, 8100.0),
        (28, -250.0),
        (30, 98.0),
        (32, 2_000_000.0),
        (34, 20.25),
        (36, 410.5),
        (38, 8300.0),
        (42, 35.5),
    ] {
        set.push((offset, f(x).to_vec()));
    }
    for offset in [8, 40, 44, 46] {
        set.push((offset, nan.to_vec())); // AphC, TmpCab, TmpTrns, TmpOt: not implemented
    }
    set.push((48, vec![5, NU16])); // St = THROTTLED, StVnd not implemented
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(113, 60, &borrowed)
}

/// Meter model 213: floats.
pub fn meter_213() -> Vec<u16> {
    let nan = [0x7FC0, 0];
    let mut set: Vec<(u16, Vec<u16>)> = Vec::new();
    for (offset, x) in [
        (2, 11.0),
        (4, 3.75),
        (6, 3.5),
        (8, 3.75),
        (10, 231.0),
        (12, 230.5),
        (14, 231.5),
        (16, 231.0),
        (20, 400.0),
        (22, 400.5),
        (24, 401.0),
        (26, 50.01),
        (28, -2000.0),
        (30, -700.0),
        (32, -650.0),
        (34, -650.0),
        (36, 2100.0),
        (60, 6_000_000.0),
        (68, 2_000_000.0),
    ] {
        set.push((offset, f32_words(x).to_vec()));
    }
    set.push((44, nan.to_vec())); // VAR: not implemented
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(213, 124, &borrowed)
}

/// A device's holding registers from `BASE`: "SunS", the models, the end marker.
pub fn load(fake: &FakeModbus, unit: u8, models: &[Vec<u16>]) {
    let mut image = vec![0x5375, 0x6E53];
    for m in models {
        image.extend(m);
    }
    image.extend([0xFFFF, 0]);
    fake.unit(unit, |u| u.holdings.clear());
    fake.set_holding(unit, BASE, &image);
}

/// MPPT model 160 with two inputs (integers, the model's scale factors).
pub fn mppt_160() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    let mut m = model(
        160,
        8 + 2 * 20,
        &[(2, &[neg(-2), neg(-1), 0, 0]), (8, &[2])], // DCA_SF, DCV_SF, DCW_SF, DCWH_SF; N
    );
    for (i, (a, v, w, wh)) in [
        (812u16, 3955u16, 3211u16, 1_500_000u32),
        (790, 3801, 3003, 1_400_000),
    ]
    .into_iter()
    .enumerate()
    {
        let at = 10 + 20 * i;
        m[at] = i as u16 + 1; // ID
        m[at + 9] = a; // DCA
        m[at + 10] = v; // DCV
        m[at + 11] = w; // DCW
        m[at + 12] = (wh >> 16) as u16; // DCWH
        m[at + 13] = wh as u16;
        m[at + 16] = 35; // Tmp, °C
        m[at + 17] = 4; // DCSt = MPPT
    }
    m
}

/// Battery model 802 (integers, scale factors).
pub fn battery_802() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    model(
        802,
        62,
        &[
            (3, &[10_240]),                     // WHRtg, WHRtg_SF 0
            (11, &[765, 990]),                  // SoC, DoD
            (13, &[980]),                       // SoH
            (14, &[0, 321]),                    // NCyc
            (16, &[3]),                         // ChaSt = DISCHARGING
            (22, &[3]),                         // State = CONNECTED
            (34, &[5123]),                      // V
            (37, &[3301]),                      // CellVMax
            (40, &[3287]),                      // CellVMin
            (44, &[neg(-1250)]),                // A
            (47, &[neg(-640)]),                 // W
            (53, &[0]),                         // WHRtg_SF
            (56, &[neg(-1), 0, neg(-1)]),       // SoC_SF, DoD_SF, SoH_SF
            (59, &[neg(-2), neg(-3), neg(-2)]), // V_SF, CellV_SF, A_SF
            (63, &[0]),                         // W_SF
        ],
    )
}
