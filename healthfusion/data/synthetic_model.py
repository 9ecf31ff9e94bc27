"""The generative model of the synthetic ICU cohort (:mod:`healthfusion.data.synthetic`): its constants and the
per-block generators of latent patient/stay state, events, images, notes and codes. The generative story and the
exact mortality model are documented in :mod:`healthfusion.data.synthetic`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from healthfusion.data.plausibility import PLAUSIBLE_RANGES
from healthfusion.data.schema import LabelSpec

BLOCK = 256  # stays per random stream; the unit of determinism
SITES = ("A", "B", "C", "D")
SITE_P = np.array([0.35, 0.28, 0.22, 0.15])
SITE_AGE = np.array([63.0, 66.0, 58.0, 70.0])
SITE_SEVERITY = np.array([0.0, 0.2, -0.2, 0.1])
SITE_OFFSET = np.array([0.0, 0.35, -0.35, 0.2])  # mortality logit
SITE_VITAL_HOURS = np.array([1.0, 1.0, 2.0, 0.75])  # charting interval of a stable stay
SITE_LAB_HOURS = np.array([8.0, 12.0, 24.0, 6.0])
SITE_LACTATE = np.array([1.0, 1.0, 0.35, 1.2])  # how readily lactate is ordered
SITE_IMAGE_P = np.array([0.8, 0.7, 0.5, 0.75])
SITE_NO_NOTES_P = np.array([0.05, 0.1, 0.3, 0.08])
CARE_UNITS = ("MICU", "SICU", "CCU", "CSRU")
UNIT_P = np.array([[0.40, 0.25, 0.15, 0.20], [0.30, 0.30, 0.20, 0.20], [0.50, 0.20, 0.20, 0.10],
                   [0.20, 0.20, 0.25, 0.35]])  # by site
PHENOTYPES = ("sepsis", "cardiac", "respiratory", "trauma", "other")
PHENO_P = np.array([[0.35, 0.05, 0.35, 0.02, 0.23], [0.20, 0.05, 0.10, 0.45, 0.20], [0.08, 0.70, 0.10, 0.00, 0.12],
                    [0.05, 0.75, 0.05, 0.05, 0.10]])  # by care unit
PHENO_SEVERITY = np.array([0.5, -0.1, 0.3, 0.0, -0.3])
PHENO_LESION_P = np.array([0.35, 0.2, 0.55, 0.2, 0.25])
ADMISSION_TYPES = ("emergency", "urgent", "elective")
ADMISSION_P = np.array([[0.8, 0.15, 0.05]] * 3 + [[0.35, 0.15, 0.5]])  # by care unit
ETHNICITIES = ("white", "black", "hispanic", "asian", "other")
ETHNICITY_P = np.array([[0.7, 0.12, 0.08, 0.05, 0.05], [0.5, 0.3, 0.1, 0.05, 0.05], [0.4, 0.15, 0.3, 0.1, 0.05],
                        [0.6, 0.1, 0.05, 0.2, 0.05]])
AGE_GROUPS = ("18-44", "45-64", "65-79", "80+")
# code, name, base logit, per 10 years of age, mortality weight
COMORBIDITIES = (
    ("I10", "hypertension", -0.2, 0.4, 0.0), ("E11.9", "diabetes", -1.2, 0.2, 0.1),
    ("I50.9", "heart_failure", -2.0, 0.5, 0.4), ("N18.3", "ckd", -2.2, 0.4, 0.3),
    ("J44.9", "copd", -2.2, 0.3, 0.3), ("I48.91", "atrial_fibrillation", -2.0, 0.6, 0.1),
    ("C79.9", "metastatic_cancer", -3.0, 0.2, 1.0), ("K74.60", "cirrhosis", -3.2, 0.0, 0.9),
    ("F10.20", "alcohol", -2.8, -0.4, 0.2), ("E66.9", "obesity", -1.8, -0.1, -0.1),
)
_C = {name: i for i, (_, name, *_rest) in enumerate(COMORBIDITIES)}
ADMISSION_CODES = ("A41.9", "I21.4", "J96.00", "T07", "R69")  # by phenotype
DIAGNOSES = ("sepsis", "aki", "ards", "heart_failure", "pneumonia", "delirium")
VARIABLES = ("HR", "RespRate", "SpO2", "Temp", "SysABP", "DiasABP", "MAP", "NISysABP", "NIDiasABP", "NIMAP", "GCS",
             "Urine", "Lactate", "Creatinine", "BUN", "WBC", "Platelets", "HCT", "Glucose", "Na", "K", "HCO3", "pH")
_V = {name: i for i, name in enumerate(VARIABLES)}
IMPLAUSIBLE_RATE = 0.002
POST_WINDOW_HOURS = 12.0

LABELS = [
    LabelSpec("mortality", "binary", description="In-hospital death (synthetic; exact logit in the module docs)."),
    LabelSpec("los_days", "regression", description="ICU length of stay in days (always > prediction time)."),
    LabelSpec("los_gt_3d", "binary", description="ICU length of stay over 3 days."),
    LabelSpec("phenotype", "multiclass", PHENOTYPES, "Main reason for the ICU stay."),
    LabelSpec("diagnoses", "multilabel", DIAGNOSES, "Acute diagnoses of the stay."),
    LabelSpec("readmission_30d", "binary", description="Next ICU stay within 30 days of discharge (null: died)."),
]
FEATURE_TYPES = {"age": "numeric", "sex": "categorical", "weight": "numeric", "height": "numeric",
                 "admission_type": "categorical", "comorbidity_count": "numeric", "prior_icu_stays": "numeric"}
NOTE_PHRASES = {
    "pheno": (("urosepsis", "septic shock", "fever and hypotension"), ("chest pain", "NSTEMI", "s/p CABG"),
              ("hypoxic respiratory failure", "COPD exacerbation", "shortness of breath"),
              ("MVC", "fall with injuries", "polytrauma"), ("GI bleed", "DKA", "overdose")),
    "sick": ("On pressors.", "Intubated and sedated.", "Requiring increasing oxygen.", "Lactate trending up."),
    "stable": ("Hemodynamically stable.", "On room air.", "Vitals stable overnight."),
    "confused": ("Confused.", "Agitated overnight, required haloperidol.", "Disoriented to time."),
    "oriented": ("Alert and oriented x3.", "Neuro intact."),
    "goals": ("Family meeting held, goals of care discussed.", "Comfort care discussed with family.",
              "DNR/DNI per family.", "Palliative care consulted."),
    "filler": ("Plan: continue current management.", "Will reassess in AM.", "Discussed with ICU team.",
               "Skin intact.", "Tolerating tube feeds.", "Pain controlled.", "Lines and drains checked.",
               "DVT prophylaxis continued.", "Electrolytes repleted as needed."),
}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng, p_rows: np.ndarray) -> np.ndarray:
    """One draw per row of the probability matrix ``p_rows`` [n, k]."""
    cdf = np.cumsum(p_rows, axis=1)
    return np.minimum((rng.random(len(p_rows))[:, None] * cdf[:, -1:] > cdf).sum(axis=1), p_rows.shape[1] - 1)


def _pick(rng, options, n: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(0, len(options), n)]


# ---------------------------------------------------------------------------------------------- latent state
def _latents(rng, start: int, hours: float) -> SimpleNamespace:
    """Patient and stay latents of one block of :data:`BLOCK` stays starting at global stay index ``start``."""
    n = BLOCK
    idx = np.arange(n)
    want_link = rng.random(n) < 0.13
    want_link[-1] = False
    head = np.maximum.accumulate(np.where(np.r_[True, ~want_link[:-1]], idx, 0))  # first stay of the chain
    site = rng.choice(4, n, p=SITE_P)[head]
    age = np.clip(rng.normal(SITE_AGE[site], 16.0), 18, 95).round()[head]
    male = (rng.random(n) < 0.56)[head]
    ethnicity = _categorical(rng, ETHNICITY_P[site])[head]
    frailty = rng.standard_normal(n)[head]
    age10 = (age - 65.0) / 10.0
    base = np.array([c[2] for c in COMORBIDITIES])
    per_age = np.array([c[3] for c in COMORBIDITIES])
    comorb = (rng.random((n, len(COMORBIDITIES))) < _sigmoid(base + per_age * age10[:, None]
                                                             + 0.8 * frailty[:, None]))[head]
    weight = np.clip(rng.normal(72 + 12 * male + 22 * comorb[:, _C["obesity"]], 14), 35, 250).round(1)[head]
    height = np.clip(rng.normal(np.where(male, 176.0, 163.0), 7.0), 135, 210).round()[head]
    weight[rng.random(n) < np.where(site == 2, 0.12, 0.04)] = np.nan  # not charted (more often at site C)
    height[rng.random(n) < 0.2] = np.nan

    unit = _categorical(rng, UNIT_P[site])
    pheno = _categorical(rng, PHENO_P[unit])
    admission = _categorical(rng, ADMISSION_P[unit])
    elective = admission == 2
    severity = (PHENO_SEVERITY[pheno] + SITE_SEVERITY[site] - 0.6 * elective + 0.15 * frailty
                + rng.standard_normal(n))
    trend = rng.normal(0.0, 0.6, n)
    lesion = np.where(rng.random(n) < PHENO_LESION_P[pheno], rng.uniform(0.6, 1.6, n), 0.0)
    goals = rng.random(n) < _sigmoid(-2.6 + 0.4 * age10 + 0.3 * frailty)
    confusion = rng.random(n) < _sigmoid(-2.0 + 0.5 * severity + 0.3 * age10 + 1.0 * comorb[:, _C["alcohol"]])
    weights = np.array([c[4] for c in COMORBIDITIES])
    logit = (-3.9 + 1.0 * severity + 0.8 * trend + 1.3 * lesion + 0.35 * age10 + comorb @ weights
             + 2.2 * goals + SITE_OFFSET[site])
    died = rng.random(n) < _sigmoid(logit)

    extra_h = np.exp(np.log(30.0) + 0.3 * severity + 0.2 * (unit == 1) - 0.3 * elective
                     + rng.normal(0.0, 0.7, n)) * np.where(died, 0.7, 1.0)
    los_h = hours + np.maximum(extra_h, 0.5)
    link = want_link & ~died
    head = np.maximum.accumulate(np.where(np.r_[True, ~link[:-1]], idx, 0))
    gap_days = rng.exponential(np.exp(np.log(40.0) - 0.4 * frailty))
    readmit = np.where(died, np.nan, (link & (gap_days <= 30)).astype(float))
    aki = 0.9 * severity + 1.2 * comorb[:, _C["ckd"]] + 0.6 * trend + rng.normal(0, 0.5, n) > 1.4
    resp_or_sepsis = (pheno == 0) | (pheno == 2)
    diagnoses = np.stack([
        (pheno == 0) | ((pheno == 2) & (severity > 1.5) & (rng.random(n) < 0.3)),
        aki,
        resp_or_sepsis & (lesion > 0) & (severity > 0.8),
        comorb[:, _C["heart_failure"]] | ((pheno == 1) & (severity > 1.0)),
        resp_or_sepsis & (lesion > 0),
        confusion,
    ], axis=1)
    return SimpleNamespace(
        n=n, start=start, site=site, age=age, male=male, ethnicity=ethnicity, frailty=frailty, comorb=comorb,
        weight=weight, height=height, unit=unit, pheno=pheno, admission=admission, severity=severity, trend=trend,
        lesion=lesion, goals=goals, confusion=confusion, logit=logit, died=died, los_h=los_h, head=head,
        prior=idx - head, readmit=readmit, diagnoses=diagnoses, post=rng.random(n) < 0.15,
        has_art=rng.random(n) < np.clip(np.array([0.5, 0.7, 0.4, 0.95])[unit] + 0.15 * severity, 0, 1),
        has_foley=rng.random(n) < 0.85,
    )


def _acuity(rng, lat, hours: float) -> np.ndarray:
    """Hourly latent acuity [n, T] over ``hours + 12`` h: severity + trend ramp + AR(1) noise (+ decline before
    a death after the prediction time)."""
    T = int(np.ceil(hours + POST_WINDOW_HOURS)) + 1
    t = np.arange(T, dtype=float)
    phi, sd = 0.85, 0.35
    shocks = rng.standard_normal((lat.n, T)) * sd * np.sqrt(1 - phi**2)
    shocks[:, 0] = rng.standard_normal(lat.n) * sd
    ar = np.empty_like(shocks)
    ar[:, 0] = shocks[:, 0]
    for j in range(1, T):
        ar[:, j] = phi * ar[:, j - 1] + shocks[:, j]
    decline = 1.5 * lat.died[:, None] * np.clip((t - hours) / 6.0, 0.0, 1.0)
    return lat.severity[:, None] + lat.trend[:, None] * np.minimum(t / hours, 1.25) + ar + decline


def _times(rng, lat, hours: float, interval: np.ndarray, drop: float):
    """Irregular, roughly regular measurement times per stay up to the prediction time (and into the post window
    for stays flagged ``post``): returns (stay index, time)."""
    horizon = hours + np.where(lat.post, np.minimum(POST_WINDOW_HOURS, lat.los_h - hours), 0.0)
    count = np.floor(horizon / interval).astype(np.int64)
    stay = np.repeat(np.arange(lat.n), count)
    k = np.arange(stay.size) - np.repeat(np.cumsum(count) - count, count)
    t = (k + 0.5 + rng.uniform(-0.4, 0.4, stay.size)) * interval[stay]
    keep = rng.random(stay.size) >= drop
    return stay[keep], t[keep].round(3)


# ---------------------------------------------------------------------------------------------- modalities
def _events(rng, lat, hours: float):
    """Vitals, GCS, urine and labs in long format: (stay index, time, variable code, value)."""
    acuity = _acuity(rng, lat, hours)
    T = acuity.shape[1]
    c = lat.comorb
    sepsis, cardiac, resp, trauma = (lat.pheno == i for i in range(4))
    out: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []

    def emit(stay, t, var, value, decimals):
        lo, hi, _ = PLAUSIBLE_RANGES[var]
        out.append((stay, t, _V[var], np.clip(value, lo, hi).round(decimals)))

    def stay_noise(sd):
        return rng.normal(0.0, sd, lat.n)

    # vitals at charting times
    interval = SITE_VITAL_HOURS[lat.site] / (1 + 0.3 * np.clip(lat.severity, 0, 3))
    stay, t = _times(rng, lat, hours, interval, drop=0.08)
    a = acuity[stay, np.minimum(t.astype(np.int64), T - 1)]

    def vital(var, p, mean, gain, sd_stay, sd, decimals, lo=-np.inf, hi=np.inf, where=None):
        m = rng.random(stay.size) < p
        if where is not None:
            m &= where[stay]
        s = stay[m]
        value = (mean + stay_noise(sd_stay))[s] + gain * a[m] + rng.normal(0.0, sd, s.size)
        emit(s, t[m], var, np.clip(value, lo, hi), decimals)

    vital("HR", 0.97, 84 + 8 * sepsis + 5 * resp - 3 * cardiac - 0.15 * (lat.age - 65), 11, 8, 4, 0, 35, 190)
    vital("RespRate", 0.9, 18 + 4.0 * resp, 3, 2.5, 2, 0, 6, 50)
    vital("SpO2", 0.93, 97.5 - 2.5 * resp, -1.2, 1.0, 1.0, 0, 70, 100)
    vital("Temp", 0.22, 37.0 + 0.7 * sepsis, 0.35, 0.3, 0.25, 1, 33, 41.5)
    vital("GCS", 0.2, 15.5 - 4 * lat.confusion - 0.5 * np.clip(lat.severity, 0, None), -1.0, 0.5, 0.8, 0, 3, 15)
    vital("Urine", 0.75, 75 - 20 * c[:, _C["ckd"]], -18, 15, 20, 0, 0, 600, where=lat.has_foley)
    m = rng.random(stay.size) < 0.92
    s = stay[m]
    sys_ = (122 - 6 * sepsis - 4 * cardiac + 0.3 * (lat.age - 65) + stay_noise(12))[s] - 11 * a[m]
    sys_ = np.clip(sys_ + rng.normal(0, 6, s.size), 60, 230)
    dia = np.clip((62 + stay_noise(7))[s] - 6 * a[m] + rng.normal(0, 4, s.size), 25, sys_ - 15)
    mean_ap = (sys_ + 2 * dia) / 3 + rng.normal(0, 2, s.size)
    art = lat.has_art[s]
    for names, mask in ((("SysABP", "DiasABP", "MAP"), art), (("NISysABP", "NIDiasABP", "NIMAP"), ~art)):
        for name, value in zip(names, (sys_, dia, mean_ap), strict=True):
            emit(s[mask], t[m][mask], name, value[mask], 0)

    # labs: panels at draw times; lactate and blood gas ordered when sick (informative missingness)
    interval = SITE_LAB_HOURS[lat.site] / (1 + 0.4 * np.clip(lat.severity, 0, 3))
    stay, t = _times(rng, lat, hours, interval, drop=0.1)
    a = acuity[stay, np.minimum(t.astype(np.int64), T - 1)]

    def lab(var, mask, value, decimals):
        emit(stay[mask], t[mask], var, value[mask], decimals)

    def lognormal(mean, gain, sd_stay, sd):
        return np.exp(np.log(mean)[stay] + stay_noise(sd_stay)[stay] + gain * a
                      + rng.normal(0.0, sd, stay.size))

    bmp = rng.random(stay.size) < 0.95
    cbc = rng.random(stay.size) < 0.9
    ckd, cirrh, diab = c[:, _C["ckd"]], c[:, _C["cirrhosis"]], c[:, _C["diabetes"]]
    lab("Creatinine", bmp, lognormal(0.95 * np.exp(0.6 * ckd), 0.25, 0.15, 0.05), 2)
    lab("BUN", bmp, lognormal(17 * np.exp(0.5 * ckd), 0.25, 0.15, 0.05), 0)
    lab("Glucose", bmp, np.clip((125 + 45 * diab + stay_noise(20))[stay] + 15 * a + rng.normal(0, 15, stay.size),
                                45, 600), 0)
    lab("Na", bmp, (139 - 1.5 * cirrh + stay_noise(3))[stay] + rng.normal(0, 1.5, stay.size), 0)
    lab("K", bmp, (4.1 + 0.4 * ckd + stay_noise(0.3))[stay] + 0.15 * a + rng.normal(0, 0.2, stay.size), 1)
    lab("HCO3", bmp, (24 + stay_noise(2))[stay] - 2.2 * a + rng.normal(0, 1, stay.size), 0)
    lab("WBC", cbc, lognormal(9 * np.exp(0.35 * sepsis), 0.2, 0.15, 0.08), 1)
    lab("Platelets", cbc, lognormal(220 * np.exp(-0.4 * cirrh - 0.2 * sepsis), -0.15, 0.25, 0.08), 0)
    lab("HCT", cbc, (33 - 4 * trauma + stay_noise(3))[stay] - 1.2 * a + rng.normal(0, 1, stay.size), 1)
    sick = lat.severity[stay]
    lactate = rng.random(stay.size) < SITE_LACTATE[lat.site][stay] * _sigmoid(-1.5 + 1.5 * sick + sepsis[stay])
    lab("Lactate", lactate, lognormal(1.3 * np.exp(0.3 * sepsis + 0.2 * cirrh), 0.35, 0.1, 0.15), 1)
    gas = rng.random(stay.size) < _sigmoid(-1.0 + 1.2 * sick + 1.5 * resp[stay] + 0.8 * (lat.site[stay] == 3))
    lab("pH", gas, np.clip((7.40 + stay_noise(0.02))[stay] - 0.035 * a + rng.normal(0, 0.015, stay.size),
                           6.8, 7.7), 2)

    stay = np.concatenate([o[0] for o in out])
    time = np.concatenate([o[1] for o in out])
    var = np.concatenate([np.full(o[0].size, o[2], dtype=np.int8) for o in out])
    value = np.concatenate([o[3] for o in out])
    # one int64 key (stay, time in ms, variable); the parts are sorted runs, which a stable sort merges fast
    key = (stay.astype(np.int64) << 26) | (np.rint(time * 1000).astype(np.int64) << 5) | var
    order = np.argsort(key, kind="stable")
    stay, time, var, value = stay[order], time[order], var[order], value[order]
    _corrupt(rng, var, value)
    return stay, time, var, value


def _corrupt(rng, var: np.ndarray, value: np.ndarray) -> None:
    """Make ~0.2 % of values impossible, in place: x10 unit slips (Temp 370, pH 74), zeros from unconnected
    probes, and 99999 placeholders where zero is possible."""
    hit = np.flatnonzero(rng.random(value.size) < IMPLAUSIBLE_RATE)
    v = var[hit]
    slip = np.isin(v, [_V["Temp"], _V["pH"]]) & (rng.random(hit.size) < 0.7)
    zero_ok = np.array([PLAUSIBLE_RANGES[name][0] <= 0 for name in VARIABLES])[v]
    value[hit] = np.where(slip, value[hit] * 10, np.where(zero_ok, 99999.0, 0.0))


def _images(rng, lat, hours: float, size: int):
    """Image index (stay index, time) and arrays [n, 1, size, size] uint8: chest-film-like anatomy, site-specific
    acquisition, and a textured blob whose size and brightness grow with the lesion latent."""
    has = rng.random(lat.n) < np.clip(SITE_IMAGE_P[lat.site] + 0.1 * ((lat.pheno == 0) | (lat.pheno == 2)), 0, 0.95)
    count = has.astype(np.int64) + (has & (rng.random(lat.n) < 0.15))
    stay = np.repeat(np.arange(lat.n), count)
    first = np.r_[True, stay[1:] != stay[:-1]] if stay.size else np.zeros(0, bool)
    time = np.where(first, rng.uniform(0.5, hours - 0.05, stay.size), rng.uniform(0.0, 0.5, stay.size) * hours)
    n = stay.size
    f32 = np.float32
    grid = ((np.arange(size) + 0.5) / size).astype(f32)
    yy, xx = grid[:, None], grid[None, :]
    lungs = (np.exp(-((((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2) ** 2))
             + np.exp(-((((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2) ** 2)))
    anatomy = (40 * np.exp(-(((xx - 0.5) / 0.05) ** 2)) - 70 * lungs).astype(f32)
    site = lat.site[stay]
    level = np.array([150.0, 165.0, 140.0, 155.0], f32)[site] + 8 * rng.standard_normal(n, dtype=f32)
    half = (size + 1) // 2  # coarse texture, upsampled x2: film grain and soft tissue
    texture = rng.standard_normal((n, half, half), dtype=f32).repeat(2, 1).repeat(2, 2)[:, :size, :size]
    img = anatomy + level[:, None, None] + 6 * texture
    img += rng.standard_normal((n, size, size), dtype=f32) * np.array([6, 6, 10, 5], f32)[site][:, None, None]
    lesion = lat.lesion[stay]
    rows = np.flatnonzero(lesion > 0)
    les = lesion[rows].astype(f32)
    for blob in range(2):  # one or two textured blobs in a lung field; bigger and brighter with the lesion
        k = rows.size
        on = (np.ones(k, bool) if blob == 0 else rng.random(k) < 0.35).astype(f32)
        cx = np.where(rng.random(k) < 0.5, 0.3, 0.7) + rng.uniform(-0.08, 0.08, k)
        cy = rng.uniform(0.3, 0.7, k)
        r = (0.04 + 0.05 * les) * rng.uniform(0.8, 1.2, k)
        gx = np.exp(-((grid[None] - cx[:, None]) ** 2) / (2 * r[:, None] ** 2)).astype(f32)
        gy = np.exp(-((grid[None] - cy[:, None]) ** 2) / (2 * r[:, None] ** 2)).astype(f32)
        amp = on * (70 + 60 * (les - 0.6))
        img[rows] += amp[:, None, None] * gy[:, :, None] * gx[:, None, :] * (1 + 0.15 * texture[rows])
    marker = (site == 1) | (site == 3)  # scanner annotation in the corner: a site shortcut, unrelated to outcome
    k = max(1, size // 10)
    img[marker, 1:1 + k, 1:1 + k] = 250
    arrays = np.clip(img, 0, 255).astype(np.uint8)[:, None]
    return stay, time.round(3), arrays


def _notes(rng, lat, hours: float):
    """1-3 template notes per stay (none for some, site-dependent) + a discharge note after the prediction time
    for some stays: (stay index, time, text)."""
    none = rng.random(lat.n) < SITE_NO_NOTES_P[lat.site]
    count = np.where(none, 0, 1 + _categorical(rng, np.tile([0.4, 0.35, 0.25], (lat.n, 1))))
    stay = np.repeat(np.arange(lat.n), count)
    n = stay.size
    P = NOTE_PHRASES
    sex = np.where(lat.male[stay], "M", "F").astype(object)
    pheno_phrase = np.empty(n, dtype=object)
    for i, options in enumerate(P["pheno"]):
        m = lat.pheno[stay] == i
        pheno_phrase[m] = _pick(rng, options, int(m.sum()))
    intro = (lat.age[stay].astype(int).astype(str).astype(object) + " y/o " + sex + " admitted to "
             + np.asarray(CARE_UNITS, dtype=object)[lat.unit[stay]] + " with " + pheno_phrase + ".")
    intro = np.where(rng.random(n) < 0.6, intro, "Progress note.")
    sick = rng.random(n) < _sigmoid(-1.0 + 1.2 * lat.severity[stay])
    severity = np.where(sick, _pick(rng, P["sick"], n), _pick(rng, P["stable"], n))
    conf = lat.confusion[stay]
    neuro = np.where(conf & (rng.random(n) < 0.7), _pick(rng, P["confused"], n),
                     np.where(~conf & (rng.random(n) < 0.5), _pick(rng, P["oriented"], n), ""))
    goals = lat.goals[stay]
    says_goals = rng.random(n) < np.where(goals, 0.75, 0.03)
    code_status = np.where(says_goals, _pick(rng, P["goals"], n),
                           np.where(rng.random(n) < np.where(goals, 0.05, 0.35), "Full code.", ""))
    filler = np.asarray(P["filler"], dtype=object)
    first = rng.integers(0, filler.size, n)
    second = (first + rng.integers(1, filler.size, n)) % filler.size  # never the same sentence twice
    text = intro
    for part in (severity, neuro, code_status, np.where(rng.random(n) < 0.5, filler[second], ""), filler[first]):
        text = text + np.where(part == "", "", " " + part)
    time = rng.uniform(1.0, hours, n).round(3)
    # discharge notes after the prediction time state the outcome: a planted leak
    dis = np.flatnonzero(rng.random(lat.n) < 0.15)
    dis_text = np.where(lat.died[dis], "Discharge summary: patient expired.",
                        "Discharge summary: transferred to floor in stable condition.").astype(object)
    stay, time = np.r_[stay, dis], np.r_[time, lat.los_h[dis].round(3)]
    order = np.lexsort((time, stay))
    return stay[order], time[order], np.concatenate([text, dis_text])[order]


def _codes(rng, lat):
    """ICD-10 comorbidity and admission-diagnosis codes at time 0; R99 at discharge for some deaths (a leak)."""
    codes = np.array([c[0] for c in COMORBIDITIES], dtype=object)
    s, k = np.nonzero(lat.comorb)
    adm = np.flatnonzero(rng.random(lat.n) < 0.5)
    r99 = np.flatnonzero(lat.died & (rng.random(lat.n) < 0.5))
    stay = np.r_[s, adm, r99]
    code = np.concatenate([codes[k], np.asarray(ADMISSION_CODES, dtype=object)[lat.pheno[adm]],
                           np.full(r99.size, "R99", dtype=object)])
    time = np.r_[np.zeros(s.size + adm.size), lat.los_h[r99].round(3)]
    order = np.lexsort((time, stay))
    return stay[order], time[order], code[order]


# ---------------------------------------------------------------------------------------------- assembly
