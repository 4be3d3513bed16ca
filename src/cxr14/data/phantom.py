"""Deterministic synthetic ChestX-ray14 look-alike ("phantom") in the NIH layout.

The pipeline's default data source, so every stage runs without the 45 GB NIH download:

    from pathlib import Path
    from cxr14.data.phantom import generate_phantom
    frame = generate_phantom(Path("data/phantom"), n_patients=800, image_size=1024, seed=0)
    # data/phantom/images/00000001_000.png ..., BBox_List_2017.csv, Data_Entry_2017.csv (written last)

Label statistics (images per patient, prevalence, labels per image) follow the real data set.
Each image is a frontal radiograph drawn at a 256 px working resolution (body, lungs with vessel
trees, heart, mediastinum, ribs, clavicles, spine, diaphragm), upsampled, then given
full-resolution quantum noise. Patients keep their anatomy and finding sites across follow-ups
(so a leaky split inflates scores); each finding leaves a location-plausible sign of random
severity; `BBox_List_2017.csv` boxes where the 8 findings NIH boxed were drawn (see
cxr14.data.phantom_boxes). A seed gives byte-identical files whatever the worker count, the run or
(as far as the libraries allow) the CPU: every random stream is seeded from (seed, stream,
patient[, follow-up]) and never from global state, signs are drawn in a fixed order, and pixels
are computed in float64, then quantised with a single rounding (see _expose).

Two kinds of label: the images (and boxes) show the truth, while the `Finding Labels` written to
`Data_Entry_2017.csv` may carry report-style noise (`missed` / `spurious`, see
cxr14.data.phantom_labels.report_noise; a random stream of their own, so the images stay
byte-identical whatever the rates), and `expert_labels.csv` gives the noiseless truth of four
findings in the format of Google's radiologist labels (cxr14.data.expert_labels).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pandas as pd

from cxr14.data.boxes import BBOX_FILE
from cxr14.data.expert_labels import EXPERT_FILE, expert_csv
from cxr14.data.parallel import opencv_single_threaded
from cxr14.data.phantom_boxes import BOXED, Box, bbox_csv, sign_extent, to_image_box
from cxr14.data.phantom_labels import FINDINGS, report_noise, sample_patient_labels
from cxr14.io import atomic_write_bytes, atomic_write_text
from cxr14.io import progress as progress_bar

log = logging.getLogger(__name__)

HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
P_GEOMETRIC, MAX_IMAGES = 0.27735, 20  # E[min(Geometric, 20)] = 3.6 images per patient
P_FEMALE, WORK, NOISE_PAD = 0.435, 256, 64
_ANATOMY, _META, _IMAGE, _SITE, _NOISE, _EXPERT = 1, 2, 3, 4, 5, 6  # random stream tags
# Share of patients whose images the expert file puts in its "test" set (the release: 1,962 of
# 4,376 images). A stand-in: the pipeline validates Set Id and otherwise uses its own split.
P_EXPERT_TEST = 0.45
# Huffman-only deflate after a fixed AVG row filter: ~2.5x faster than zlib level 1 on noisy
# radiographs and ~20 % smaller; plain level 1 on OpenCV builds without these flags.
PNG_PARAMS = (
    [
        cv2.IMWRITE_PNG_COMPRESSION,
        1,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_AVG,
    ]
    if hasattr(cv2, "IMWRITE_PNG_FILTER")
    else [cv2.IMWRITE_PNG_COMPRESSION, 1]
)
Gen = np.random.Generator
Site = dict[str, float]


# ------------------------------------------------------------------------------------------ anatomy
@dataclass(frozen=True)
class Anatomy:
    """A patient's fixed body: geometry (image fractions), static maps and finding sites.

    Drawn once from (seed, patient) so all follow-ups share lung shape, heart size, ribs, vessel
    tree, and where a nodule, an effusion, etc. would be.
    """

    geo: dict[str, float]
    female: bool
    static: np.ndarray  # spine, airway, breast shadows (density units, WORK x WORK)
    vessels: np.ndarray  # lung vessel tree, 0..1
    sites: dict[str, Site]


# float64 throughout, deliberately. In float32 the maps came out an ulp apart on different CPUs
# (numpy's AVX-512 power and arctan2 vs libm's, its AVX2 exp/sin vs its SSE ones, OpenCV's fused
# vs unfused multiply-adds), ~1e-5 of a grey level: enough to flip a few pixels per image that
# sat on a rounding boundary. A float64 ulp is ~1e9 times smaller.
_U = (np.arange(WORK, dtype=np.float64) + 0.5) / WORK
GX, GY = np.meshgrid(_U, _U)


def _px(x: float) -> int:
    return int(round(x * WORK))


def _canvas(draw: list[tuple], sigma: float) -> np.ndarray:
    """Rasterise cv2 lines/polylines (fn, *args) on a uint8 canvas, blurred, as float 0..1."""
    canvas = np.zeros((WORK, WORK), np.uint8)
    for fn, *args in draw:
        fn(canvas, *args)
    return cv2.GaussianBlur(canvas / 255.0, (0, 0), sigma)


def _vessel_tree(rng: Gen, med: float) -> np.ndarray:
    """Branching, tapering vessels radiating from both hila (the lung markings)."""
    lines = []
    for s in (-1, 1):
        stack = [
            (0.5 + s * (med + 0.06), 0.45, np.radians(th + rng.normal(0, 6)), rng.uniform(0.05, 0.08), 3, 230.0)
            for th in np.linspace(-75, 80, 9)
        ]
        while stack:
            x, y, th, length, width, value = stack.pop()
            x2, y2 = x + s * np.cos(th) * length, y + np.sin(th) * length
            lines.append((cv2.line, (_px(x), _px(y)), (_px(x2), _px(y2)), int(value), width, cv2.LINE_AA))
            if value > 100:
                stack += [
                    (
                        x2,
                        y2,
                        th + turn * np.radians(rng.uniform(10, 30)) + rng.normal(0, 0.1),
                        length * rng.uniform(0.7, 0.9),
                        max(1, width - 1),
                        value * 0.82,
                    )
                    for turn in (-1, 1)
                ]
    return _canvas(lines, 0.8)


@lru_cache(maxsize=8)
def make_anatomy(seed: int, patient_id: int) -> Anatomy:
    """Build (and cache per process) a patient's anatomy from (seed, patient_id) alone."""
    rng = np.random.default_rng([seed, _ANATOMY, patient_id])
    female = bool(rng.random() < P_FEMALE)  # first draw: _patient_rows reads the same value
    u = rng.uniform
    geo = _body_geometry(rng, female)
    y0, step, carina = u(0, 0.03), u(0.036, 0.045), (_px(0.5), _px(0.37))
    spine = _canvas(
        [
            (cv2.rectangle, (_px(0.472), _px(y + 0.004)), (_px(0.528), _px(y + step - 0.006)), 255, -1)
            for y in np.arange(y0, 1, step)
        ],
        1.0,
    )  # vertebral bodies
    airway = _canvas(
        [
            (cv2.line, (_px(0.5), 0), carina, 255, _px(0.022)),
            (cv2.line, carina, (_px(0.43), _px(0.44)), 255, _px(0.013)),
            (cv2.line, carina, (_px(0.58), _px(0.45)), 255, _px(0.012)),
        ],
        1.2,
    )
    static = 0.6 * geo["bone"] * spine - 0.16 * airway
    for s in (-1, 1) if female else ():  # breast shadows over the lower zones
        breast = 1 - ((GX - 0.5 - s * 0.25) / 0.16) ** 2 - ((GY - 0.7) / 0.11) ** 2
        static += u(0.05, 0.09) * np.clip(breast, 0, 1) ** 0.5
    return Anatomy(geo, female, static, _vessel_tree(rng, geo["med"]), _sites(seed, patient_id))


def _body_geometry(rng: Gen, female: bool) -> dict[str, float]:
    """Body, lung, heart, rib and density parameters (image fractions), drawn in this order."""
    u = rng.uniform
    geo = dict(
        body_w=u(0.06, 0.12) - 0.015 * female,
        neck_w=u(0.065, 0.095),
        shoulder_y=u(0.01, 0.07),
        lung_w=u(0.24, 0.32),
        med=u(0.035, 0.05),
        apex_y=u(0.10, 0.17),
        dia_y=u(0.68, 0.80),
        dome_h=u(0.045, 0.075),
        ctr=u(0.38, 0.49),
        heart_ry=u(0.11, 0.14),
        tilt=u(0.3, 0.6),
        rib_sp=u(0.062, 0.076),
        rib_y0=u(0.09, 0.13),
        rib_curve=u(0.8, 1.15),
        clav_y=u(0.15, 0.19),
        air=u(0.36, 0.47),
        body_den=u(0.68, 0.90),
        bone=u(0.09, 0.17),
        mw=u(0.045, 0.06),
        vgain=u(0.09, 0.14),
        gastric=u(0, 1),
    )
    geo["body_w"] += geo["med"] + geo["lung_w"]  # chest wall + arms beyond the lungs
    return geo


def _sites(seed: int, patient_id: int) -> dict[str, Site]:
    """Where / how big each of this patient's findings would be (a stream per finding)."""
    sites = {}
    for i, name in enumerate(FINDINGS):
        r = np.random.default_rng([seed, _SITE, patient_id, i]).random(7)
        sites[name] = dict(
            side=-1.0 if r[0] < 0.5 else 1.0,
            both=float(r[1] < 0.35),
            a=r[2],
            v=r[3],
            size=r[4],
            sev=0.35 + 0.65 * r[5],
            key=r[6],
        )
    return sites


# ---------------------------------------------------------------------------------------- rendering
def _lung(s: int, med: float, wl: float, apex: float, dia: float, dome: float) -> NS:
    """Soft lung mask and the lung-local coordinates signs are placed in (s=-1: patient's right)."""
    t = s * (GX - (0.5 + s * med))  # lateral distance from the medial border
    v = (GY - apex) / (dia - apex)  # 0 at the apex, 1 at the costophrenic angle
    a = t / wl
    dl = wl * np.sqrt(1 - (1 - np.clip(v / 0.85, 0, 1)) ** 2) - t  # to the lateral chest wall
    dt = GY - apex - 0.12 * (a - 0.4) ** 2  # below the apex
    db = dia - dome * (1 - ((a - 0.35) / 0.65) ** 2) - GY  # above the diaphragm dome
    m = np.clip(np.minimum(np.minimum(t, dl), np.minimum(dt, db)) / 0.01 + 0.5, 0, 1)
    return NS(m=m, raw=m, a=a, v=v, dl=dl, dt=dt, s=s, xm=0.5 + s * med, wl=wl, apex=apex, dia=dia, dome=dome)


def _at(lung: NS, a: float, v: float) -> tuple[float, float]:
    """Image position of lung-local coordinates (a across from the medial border, v down)."""
    wp = np.sqrt(1 - (1 - min(max(v, 0.0) / 0.85, 1.0)) ** 2)
    return lung.xm + lung.s * a * lung.wl * wp, lung.apex + v * (lung.dia - lung.apex)


def _blob(
    d: np.ndarray,
    x: float,
    y: float,
    r: float,
    amp: float,
    mask: np.ndarray | None = None,
    lobes: tuple[float, float] | None = None,
    flat: bool = False,
    rim: float = 0.0,
) -> None:
    """Add a sphere-like (or flat, rimmed, lobulated) round density to d in place, in its bbox only."""
    x0, x1 = max(0, _px(x - 1.4 * r)), _px(x + 1.4 * r) + 1
    y0, y1 = max(0, _px(y - 1.4 * r)), _px(y + 1.4 * r) + 1
    dx, dy = GX[y0:y1, x0:x1] - x, GY[y0:y1, x0:x1] - y
    dist = np.sqrt(dx * dx + dy * dy)
    radius: float | np.ndarray = r  # per pixel when lobulated
    if lobes is not None:
        th = np.arctan2(dy, dx)
        radius = r * (1 + lobes[0] * np.sin(3 * th + lobes[1]) + 0.05 * np.sin(5 * th + 2 * lobes[1]))
    prof = np.clip((radius - dist) / 0.006, 0, 1) if flat else np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, 1))
    prof = amp * prof + rim * np.exp(-(((dist - radius) / 0.005) ** 2))
    d[y0:y1, x0:x1] += prof * (1 if mask is None else mask[y0:y1, x0:x1])


def _patches(rng: Gen, cells: int, threshold: float) -> np.ndarray:
    """Smooth random patch field in 0..1 (ill-defined opacities), about `cells` blobs across."""
    field = rng.standard_normal((cells, cells))
    return np.clip((cv2.resize(field, (WORK, WORK), interpolation=cv2.INTER_CUBIC) - threshold) / 1.5, 0, 1)


def _box(lung: NS, v0: float, v1: float, a0: float, a1: float, soft: float) -> np.ndarray:
    """Soft lobe-like region in lung-local coordinates, restricted to the lung."""
    w = np.clip(np.minimum(lung.v - v0, v1 - lung.v) / soft + 0.5, 0, 1)
    return w * np.clip(np.minimum(lung.a - a0, a1 - lung.a) / soft + 0.5, 0, 1) * lung.m


def _sides(site: Site) -> tuple[int, ...]:
    return (-1, 1) if site["both"] else (int(site["side"]),)


def _geometry(an: Anatomy, sev: dict[str, float], rng: Gen, view: str) -> NS:
    """Per-image geometry: breathing and view (AP: magnified heart, less inspiration), plus the
    findings that move anatomy (big heart, hyperinflation, volume loss)."""
    g, ap = dict(an.geo), view == "AP"
    jit = rng.normal(0, 1, 3)  # a fixed number of draws whatever the labels
    g["dia_y"] += 0.008 * jit[0] - 0.025 * ap
    g["ctr"] *= (1 + 0.02 * jit[1]) * (1.12 if ap else 1.0)
    g["clav_y"] += 0.006 * jit[2] - 0.03 * ap
    g["mw"], g["rib_curve"] = g["mw"] * (1.15 if ap else 1.0), g["rib_curve"] * (0.75 if ap else 1.0)
    if "Cardiomegaly" in sev:  # cardiothoracic ratio 0.51..0.64 (PA; normal 0.38..0.49)
        g["ctr"] = 0.50 + 0.09 * an.sites["Cardiomegaly"]["size"] + 0.05 * sev["Cardiomegaly"]
        g["ctr"] *= 1.06 if ap else 1.0
        g["heart_ry"] *= 1.06
    if "Emphysema" in sev:  # low flat diaphragm, wide intercostal spaces, lucent pruned lungs
        e = sev["Emphysema"]
        g.update(
            dia_y=g["dia_y"] + 0.04 * e,
            dome_h=g["dome_h"] * (1 - 0.7 * e),
            lung_w=g["lung_w"] + 0.01 * e,
            rib_sp=g["rib_sp"] * (1 + 0.12 * e),
            air=g["air"] + 0.1 * e,
            vgain=g["vgain"] * (1 - 0.45 * e),
        )
    dia = {-1: g["dia_y"] - 0.015, 1: g["dia_y"]}
    if "Atelectasis" in sev:  # volume loss: raised hemidiaphragm
        dia[int(an.sites["Atelectasis"]["side"])] -= 0.015 + 0.035 * sev["Atelectasis"]
    lungs = {s: _lung(s, g["med"], g["lung_w"], g["apex_y"], dia[s], g["dome_h"]) for s in (-1, 1)}
    return NS(g=g, lungs=lungs, ap=ap, vessels=an.vessels)


def _base_density(an: Anatomy, geo: NS, rng: Gen) -> np.ndarray:
    """A normal chest in density units (0 air outside .. ~1.3 mediastinum + bone)."""
    g, lungs, adx = geo.g, geo.lungs, np.abs(GX - 0.5)
    rise = np.clip((GY - g["shoulder_y"]) / 0.15, 0, 1)  # sloping shoulders, then a slight taper
    hw = g["neck_w"] + (g["body_w"] + 0.03 - g["neck_w"]) * rise * (2 - rise)
    hw -= 0.03 * np.clip((GY - g["shoulder_y"] - 0.17) / 0.2, 0, 1) + 0.03 * np.clip((GY - 0.6) / 0.4, 0, 1) ** 2
    body = np.clip(1 - (adx / hw) ** 2, 0, 1) ** 0.3
    d = g["body_den"] * (0.55 + 0.45 * hw / g["body_w"]) * body + an.static
    medi = np.clip((g["mw"] * (1 + 0.4 * np.clip((GY - 0.2) / 0.25, 0, 1)) - adx) / 0.01 + 0.5, 0, 1)
    medi *= np.clip((GY - g["shoulder_y"] - 0.03) / 0.06, 0, 1)
    # heart: an egg tilted down to the patient's left, 1/3 right of the midline, cut by the diaphragm
    width, ry = g["ctr"] * 2 * (g["med"] + g["lung_w"]), g["heart_ry"]
    c, s_ = np.cos(g["tilt"]), np.sin(g["tilt"])
    rx = np.sqrt(max((width / 2) ** 2 - (ry * s_) ** 2, 0.8 * ry * ry)) / c
    cx, cy = 0.5 + 0.15 * width, g["dia_y"] - 0.7 * g["dome_h"] - 0.35 * np.hypot(rx * s_, ry * c)
    hu, hv = ((GX - cx) * c + (GY - cy) * s_) / rx, ((GY - cy) * c - (GX - cx) * s_) / ry
    dome_top = g["dia_y"] - g["dome_h"]
    heart = np.clip((1 - np.sqrt(hu * hu + hv * hv)) / 0.08 + 0.5, 0, 1)
    heart *= np.clip((dome_top + 0.04 - GY) / 0.02, 0, 1)
    geo.heart = heart  # the Cardiomegaly box
    solid = np.maximum(medi * (GY < cy + 0.05), heart)
    for side in lungs.values():  # heart and mediastinum displace lung (signs use this mask too)
        side.m = side.m * (1 - 0.85 * solid)
    lung = np.maximum(lungs[-1].m, lungs[1].m)
    abdomen = np.clip((GY - dome_top) / 0.03, 0, 1) * (1 - np.maximum(lungs[-1].raw, lungs[1].raw)) * body
    d += 0.22 * solid + 0.15 * abdomen - g["air"] * lung + g["vgain"] * an.vessels * lung
    _blob(d, 0.5 + g["mw"] + 0.012, cy - ry - 0.07, 0.028, 0.18)  # aortic knob
    for s in (-1, 1):  # humeral heads
        _blob(d, 0.5 + s * (g["body_w"] + 0.005), g["shoulder_y"] + 0.15, 0.045, 1.5 * g["bone"])
    if g["gastric"] > 0.4:  # gastric bubble under the left hemidiaphragm
        _blob(d, 0.67, lungs[1].dia - g["dome_h"] + 0.07, 0.02 + 0.02 * g["gastric"], -0.12, flat=True)
    # posterior ribs curving down laterally, fainter anterior ribs sloping down medially, clavicles
    cage_v = np.clip((GY - g["apex_y"]) / (g["dia_y"] - g["apex_y"]) / 0.85, 0, 1)
    cage = np.clip((g["med"] + g["lung_w"] * np.sqrt(1 - (1 - cage_v) ** 2) + 0.02 - adx) / 0.03, 0, 1)
    cage *= np.clip((adx - 0.02) / 0.03, 0, 1) * np.clip((g["dia_y"] + 0.03 - GY) / 0.02, 0, 1)
    ph = (GY - g["rib_y0"] + 0.35 * adx - 1.5 * g["rib_curve"] * adx * adx) / g["rib_sp"]
    post = np.clip((0.19 - np.abs(ph - np.floor(ph) - 0.5)) / 0.06, 0, 1) * (ph > 0)
    ph = (GY - g["rib_y0"] - 0.1 - 0.3 * (0.4 - adx)) / (1.15 * g["rib_sp"])
    ant = np.clip((0.2 - np.abs(ph - np.floor(ph) - 0.5)) / 0.08, 0, 1) * np.clip((adx - 0.1) / 0.05, 0, 1)
    ant *= ph > 0
    clav_pts = ((0.035, 0.03), (0.12, 0.005), (0.22, -0.01), (0.3, -0.035))
    clav = _canvas(
        [
            (
                cv2.polylines,
                [np.array([(_px(0.5 + s * x), _px(g["clav_y"] + y)) for x, y in clav_pts], np.int32)],
                False,
                255,
                _px(0.018),
            )
            for s in (-1, 1)
        ],
        1.0,
    )
    d += g["bone"] * ((0.7 * post + 0.3 * ant) * cage + 1.3 * clav)
    mottle = rng.standard_normal((48, 48))
    return d + 0.012 * cv2.resize(mottle, (WORK, WORK), interpolation=cv2.INTER_CUBIC)


# Signs: each adds density to d in place, given the geometry, the patient's site, a private rng and
# the image's severity e in 0.25..1 (fainter and smaller when low).
def _effusion(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Basal opacity rising laterally (meniscus), blunting the costophrenic angle; one or both sides."""
    for s in _sides(site):
        L = geo.lungs[s]
        level = L.dia - (0.08 + 0.30 * e * rng.uniform(0.7, 1.1)) * (L.dia - L.apex)
        surface = level - (0.03 + 0.04 * e) * np.clip(L.a, 0, 1.2) ** 2
        d += (0.26 + 0.14 * e) * np.clip((GY - surface) / 0.025, 0, 1) * L.m


def _pneumothorax(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Apical/lateral lucent rim without vessel markings, bounded by a thin bright pleural line."""
    L = geo.lungs[int(site["side"])]
    r, md = 0.025 + 0.045 * e * rng.uniform(0.8, 1.2), np.minimum(L.dl, 1.3 * L.dt)
    upper = np.clip((0.9 - L.v) / 0.25, 0, 1) * L.m
    rim = np.clip((r - md) / 0.006, 0, 1) * upper
    d -= rim * (geo.g["vgain"] * geo.vessels + 0.05 + 0.04 * e)
    d += (0.10 + 0.06 * e) * np.exp(-(((md - r) / 0.0045) ** 2)) * upper + 0.04 * e * L.m * (1 - rim)


def _nodule(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """One (sometimes two) small round opacities, ~0.8-2.6 cm, anywhere in the lungs."""
    for j in range(1 + (site["key"] < 0.25)):
        L = geo.lungs[int(site["side"]) * (1 - 2 * j)]
        x, y = _at(L, 0.2 + 0.6 * ((site["a"] + 0.37 * j) % 1), 0.15 + 0.6 * ((site["v"] + 0.53 * j) % 1))
        _blob(d, x, y, (0.009 + 0.02 * site["size"]) * rng.uniform(0.9, 1.1), 0.16 + 0.22 * e, L.m)


def _mass(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """A large (> 3 cm) lobulated opacity, upper/mid zones."""
    L = geo.lungs[int(site["side"])]
    x, y = _at(L, 0.2 + 0.5 * site["a"], 0.2 + 0.5 * site["v"])
    lobes = (0.06 + 0.08 * site["key"], 6.28 * site["key"])
    _blob(d, x, y, (0.038 + 0.045 * site["size"]) * rng.uniform(0.9, 1.1), 0.24 + 0.2 * e, L.m, lobes)


def _emphysema(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Upper-zone bullae (the hyperinflation itself is geometry)."""
    for _ in range(int(1 + 2 * site["size"])):
        L = geo.lungs[int(rng.choice([-1, 1]))]
        x, y = _at(L, rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.4))
        _blob(d, x, y, rng.uniform(0.025, 0.05), -0.05 - 0.05 * e, L.m, flat=True, rim=0.03)


def _fibrosis(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Bilateral reticular net (zero crossings of band-passed noise), upper and peripheral."""
    noise: np.ndarray = np.random.default_rng(int(site["key"] * 2**31)).standard_normal((WORK, WORK))
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    net = np.exp(-((noise / (0.3 * noise.std())) ** 2))
    for L in geo.lungs.values():
        zone = np.clip(1 - L.dl / (0.10 + 0.06 * e), 0, 1) * np.clip((0.8 - L.v) / 0.3, 0, 1) * L.m
        d += (0.10 + 0.14 * e) * net * zone


def _hernia(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Retrocardiac gas bubble above the diaphragm, with a rim and an air-fluid level."""
    L = geo.lungs[1]
    x, y = 0.51 + 0.06 * site["a"], L.dia - 0.7 * L.dome - 0.05 - 0.04 * site["v"]
    r = 0.03 + 0.025 * site["size"]
    gas = np.zeros_like(d)
    _blob(gas, x, y, r, 1.0, flat=True)
    d -= (0.22 + 0.14 * e) * gas * (GY < y + 0.3 * r)
    _blob(d, x, y, r, 0.0, rim=0.08 + 0.06 * e)


def _atelectasis(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Plate-like band or basal wedge along the heart (plus the raised hemidiaphragm of geometry)."""
    L = geo.lungs[int(site["side"])]
    if site["key"] < 0.55:
        line = _at(L, 0.5, 0.55 + 0.25 * site["v"])[1] + (site["a"] - 0.5) * 0.15 * (L.a - 0.5) * L.wl
        wa = np.clip((L.a - 0.1) / 0.1, 0, 1) * np.clip((0.95 - L.a) / 0.1, 0, 1)
        d += (0.2 + 0.16 * e) * np.exp(-(((GY - line) / (0.006 + 0.01 * e)) ** 2)) * wa * L.m
    else:
        k = 0.5 + 0.6 * site["a"]
        d += (0.18 + 0.16 * e) * np.clip((0.1 + k * (L.v - 0.45) - L.a) / 0.04, 0, 1) * (L.v > 0.45) * L.m


def _consolidation(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Dense lobar opacity (upper lobe with a sharp fissure, middle, or lower), air bronchograms."""
    L, lobe = geo.lungs[int(site["side"])], int(site["a"] * 3)
    if lobe == 0:
        region = _box(L, -1, 0.35 + 0.1 * site["v"], -1, 2, 0.01) * np.clip((GY - L.apex) / 0.04, 0, 1)
    else:
        region = (
            _box(L, 0.4, 0.75, -0.2, 0.55 + 0.2 * site["v"], 0.07)
            if lobe == 1
            else _box(L, 0.5 + 0.1 * site["v"], 2, -1, 2, 0.08)
        )
    d += (0.28 + 0.2 * e) * region * (0.75 + 0.25 * _patches(rng, 40, -1.0))
    if site["size"] > 0.5:
        x, y = _at(L, 0.15, 0.45)
        ends = [(_px(x + L.s * 0.2 * np.cos(th)), _px(y + 0.2 * np.sin(th))) for th in rng.uniform(-1.2, 1.2, 4)]
        air = _canvas([(cv2.line, (_px(x), _px(y)), end, 255, 1, cv2.LINE_AA) for end in ends], 0.5)
        d -= 0.10 * e * region * air


def _infiltration(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Patchy ill-defined opacities, mid and lower zones, one or both lungs."""
    patches = _patches(rng, 16, 0.2 - 0.4 * e)
    for s in _sides(site):
        d += (0.11 + 0.14 * e) * patches * _box(geo.lungs[s], 0.2 + 0.2 * site["v"], 1.1, 0, 1.1, 0.15)


def _pneumonia(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Patchy, consolidation-like opacity, usually in a lower zone."""
    top = 0.45 + 0.2 * site["v"] - 0.3 * (site["key"] < 0.2)  # a fifth reach the mid zone
    region = _box(geo.lungs[int(site["side"])], top, 1.1, 0.05, 1.1, 0.08)
    d += (0.30 + 0.2 * e) * _patches(rng, 24, -0.3) * region


def _edema(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Bilateral perihilar "bat-wing" haze, prominent vessels and basal Kerley B lines."""
    kerley = []
    for L in geo.lungs.values():
        hx, hy = _at(L, 0.2, 0.45)
        wing = np.exp(-(((GX - hx) / 0.13) ** 2 + ((GY - hy) / 0.17) ** 2))
        wing *= 0.8 + 0.2 * _patches(rng, 24, -1)
        d += ((0.15 + 0.2 * e) * wing + 0.05 * e * geo.vessels) * L.m
        for y in rng.uniform(0.65, 0.92, int(rng.integers(3, 8))):
            x, y = _at(L, 1.0, y)
            end = (_px(x - L.s * rng.uniform(0.02, 0.04)), _px(y))
            kerley.append((cv2.line, (_px(x), _px(y)), end, 255, 1))
    d += 0.12 * e * _canvas(kerley, 0.5) * np.maximum(geo.lungs[-1].m, geo.lungs[1].m)


def _pleural_thickening(d: np.ndarray, geo: NS, site: Site, rng: Gen, e: float) -> None:
    """Bright irregular rim along the lateral chest wall or an apical cap."""
    th, apical = (0.010 + 0.014 * e) * (1 + 0.35 * np.sin(GY * 40 + 6.28 * site["key"])), site["v"] < 0.5
    for s in _sides(site):
        L = geo.lungs[s]
        zone = np.clip((0.35 - L.v) / 0.1 if apical else np.minimum(L.v - 0.15, 0.95 - L.v) / 0.1, 0, 1)
        d += (0.32 + 0.14 * e) * np.clip((th - (L.dt if apical else L.dl)) / 0.004 + 0.5, 0, 1) * zone * L.m


_SIGNS = {
    "Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Nodule": _nodule,
    "Mass": _mass,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Hernia": _hernia,
    "Atelectasis": _atelectasis,
    "Consolidation": _consolidation,
    "Infiltration": _infiltration,
    "Pneumonia": _pneumonia,
    "Edema": _edema,
    "Pleural_Thickening": _pleural_thickening,
}  # Cardiomegaly is all geometry


@lru_cache(maxsize=2)
def _noise_tile(size: int) -> np.ndarray:
    """A fixed full-resolution noise field; images read it at random offsets (far faster than drawing).

    float32 on purpose: _expose relies on its 24-bit significands to add the noise exactly.
    """
    return np.random.default_rng(12345).standard_normal((size + NOISE_PAD,) * 2, dtype=np.float32)


_SCRATCH = threading.local()  # per thread: the full-resolution float64 image, reused image after image


def _expose(img: np.ndarray, tile: np.ndarray, sigma: float, image_size: int) -> np.ndarray:
    """The WORK-resolution float64 grey levels img, upsampled, plus sigma x tile noise, as uint8.

    Quantising is where a last-bit difference shows, so it must compute the same on every CPU,
    and cv2.addWeighted fuses a * alpha + b * beta, or not, depending on the SIMD path it
    dispatches to. Here img is float64 and sigma is rounded to a multiple of 1/1024, so
    sigma x tile (24 significant bits by 11) is exact in float64: img + sigma x tile is rounded
    once, fused or not, then half to even to uint8. The float64 image goes into a reused
    buffer: a fresh 8 MB array per image was page-faulted in again and again.
    """
    buf = getattr(_SCRATCH, "image", None)
    if buf is None or buf.shape != (image_size, image_size):
        buf = _SCRATCH.image = np.empty((image_size, image_size))
    up = cv2.INTER_LINEAR if image_size >= WORK else cv2.INTER_AREA
    img = cv2.resize(img, (image_size, image_size), dst=buf, interpolation=up)
    return cv2.addWeighted(img, 1.0, tile, round(sigma * 1024) / 1024, 0.0, dtype=cv2.CV_8U)


def render_image(
    anatomy: Anatomy, labels: tuple[str, ...] | list[str], rng: Gen, image_size: int, view: str = "PA"
) -> np.ndarray:
    """Render one radiograph (uint8, image_size x image_size) of `anatomy` showing exactly `labels`.

    The rng is first split into fixed sub-streams (base, noise, one per finding), so removing a
    label changes only that finding's sign; the tests rely on it to check where signs land.
    """
    return render_with_boxes(anatomy, labels, rng, image_size, view)[0]


def render_with_boxes(
    anatomy: Anatomy, labels: tuple[str, ...] | list[str], rng: Gen, image_size: int, view: str = "PA"
) -> tuple[np.ndarray, dict[str, Box]]:
    """:func:`render_image`, plus finding -> (x, y, w, h) in image pixels for the boxed findings.

    A box surrounds the density the finding's sign added (cxr14.data.phantom_boxes); for
    Cardiomegaly, which is geometry rather than a sign, the (enlarged) heart shadow.
    """
    keys = rng.integers(0, 2**63 - 1, size=len(FINDINGS) + 2)
    base, noise_rng = np.random.default_rng(keys[0]), np.random.default_rng(keys[1])
    frng = {n: np.random.default_rng(keys[2 + i]) for i, n in enumerate(FINDINGS) if n in labels}
    sev = {n: float(np.clip(anatomy.sites[n]["sev"] + r.normal(0, 0.1), 0.25, 1)) for n, r in frng.items()}
    geo = _geometry(anatomy, sev, base, view)
    d = _base_density(anatomy, geo, base)
    haze = cv2.resize(cv2.resize(d, (16, 16), interpolation=cv2.INTER_AREA), (WORK, WORK))  # scatter
    extents = {"Cardiomegaly": sign_extent(geo.heart, 0.5)} if "Cardiomegaly" in sev else {}
    # In FINDINGS order, never a set's: `frng.keys() & _SIGNS.keys()` iterated in string-hash order,
    # which PYTHONHASHSEED changes from run to run, and float sums in another order round apart.
    for name in (name for name in frng if name in _SIGNS):
        before = d.copy() if name in BOXED else None
        _SIGNS[name](d, geo, anatomy.sites[name], frng[name], sev[name])
        if before is not None:
            extents[name] = sign_extent(d - before)
    # exposure: scatter haze (of the normal chest, so signs stay local), window, gamma, heel effect
    lo, hi = base.uniform(-0.06, 0.02), base.uniform(1.2, 1.4) + 0.1 * geo.ap
    scatter, gamma = base.uniform(0.05, 0.15) + 0.08 * geo.ap, base.uniform(0.8, 1.25)
    img = np.clip(((1 - scatter) * d + scatter * haze - lo) / (hi - lo), 0, 1) ** gamma
    img += base.uniform(-0.04, 0.04) * (GY - 0.5)  # heel effect
    img *= 255.0  # grey levels from here on (cheaper here than at full resolution)
    angle, scale = base.normal(0, 1.2), base.uniform(0.96, 1.03) + 0.03 * geo.ap  # positioning jitter
    m: np.ndarray = cv2.getRotationMatrix2D((WORK / 2, WORK / 2), angle, scale)
    m[:, 2] += base.normal(0, 0.01, 2) * WORK
    img = cv2.warpAffine(img, m, (WORK, WORK), borderMode=cv2.BORDER_REPLICATE)
    ox, oy = noise_rng.integers(0, NOISE_PAD, 2)
    tile = _noise_tile(image_size)[oy : oy + image_size, ox : ox + image_size]
    sigma = noise_rng.uniform(1.0, 2.2) + 0.6 * geo.ap  # grey levels
    boxes = {name: to_image_box(extent, m, WORK, image_size) for name, extent in extents.items() if extent}
    return (_expose(img, tile, sigma, image_size), {name: box for name, box in boxes.items() if box is not None})


# --------------------------------------------------------------------------------------- generation
def _patient_rows(seed: int, pid: int, image_size: int) -> list[list]:
    """Metadata rows of one patient: a pure function of (seed, pid), so any process agrees."""
    rng = np.random.default_rng([seed, _META, pid])
    female = np.random.default_rng([seed, _ANATOMY, pid]).random() < P_FEMALE  # as make_anatomy
    n_images = min(MAX_IMAGES, int(rng.geometric(P_GEOMETRIC)))
    age, p_ap, rows = float(np.clip(rng.normal(46.5, 16.5), 2, 90)), rng.beta(2, 3), []
    for fu, labels in enumerate(sample_patient_labels(rng, n_images)):
        view = "AP" if rng.random() < p_ap else "PA"
        spacing = round((0.143 if view == "PA" else 0.139) * 1024 / image_size, 3)
        rows.append(
            [
                f"{pid:08d}_{fu:03d}.png",
                "|".join(labels),
                fu,
                pid,
                int(age),
                "F" if female else "M",
                view,
                image_size,
                image_size,
                spacing,
                spacing,
            ]
        )
        age += rng.exponential(0.5)  # years between follow-ups
    return rows


def _render_task(task: tuple[int, int, int, str, str, int, str]) -> list[tuple[str, str, Box]]:
    """Worker: render, PNG-encode and atomically write one image; return its (image, finding, box) rows."""
    seed, pid, fu, labels, view, size, path = task
    rng = np.random.default_rng([seed, _IMAGE, pid, fu])
    image, boxes = render_with_boxes(make_anatomy(seed, pid), labels.split("|"), rng, size, view)
    ok, buf = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(Path(path), buf.tobytes(), durable=False)
    return [(Path(path).name, finding, box) for finding, box in boxes.items()]


def _keep_freed_heap() -> None:
    """Pool initializer: let the worker keep the memory it frees (glibc; a no-op elsewhere).

    Each image allocates and frees ~16 MB of float64 maps; glibc's default hands the top of the
    heap back to the OS every time, and the next image page-faults it all in again: ~4 ms of
    system time per 1024 px image, which is what float64 added to the run.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB of free heap
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (its maximum): maps this size come from the heap


def _noisy_rows(rows: list[list], seed: int, missed: float, spurious: float) -> list[list]:
    """`rows` with report-style noise in `Finding Labels` (a stream per patient, tag _NOISE)."""
    by_patient: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_patient.setdefault(row[3], []).append(index)
    noisy = [list(row) for row in rows]
    for pid, indices in by_patient.items():
        rng = np.random.default_rng([seed, _NOISE, pid])
        truth = [tuple(rows[i][1].split("|")) for i in indices]
        for i, labels in zip(indices, report_noise(truth, rng, missed, spurious)):
            noisy[i][1] = "|".join(labels)
    return noisy


def _expert_set_ids(rows: list[list], seed: int) -> list[str]:
    """The expert file's `Set Id` per row: a seeded draw per patient (tag _EXPERT), a stand-in."""
    test = {
        pid: bool(np.random.default_rng([seed, _EXPERT, pid]).random() < P_EXPERT_TEST) for pid in {r[3] for r in rows}
    }
    return ["test" if test[row[3]] else "val" for row in rows]


def _write_tables(out_dir: Path, rows: list[list], seed: int, missed: float, spurious: float) -> pd.DataFrame:
    """`expert_labels.csv` (truth) then `Data_Entry_2017.csv` (noisy labels, last); its frame."""
    frame = pd.DataFrame(_noisy_rows(rows, seed, missed, spurious), columns=HEADER)
    truth = [tuple(row[1].split("|")) for row in rows]
    atomic_write_text(out_dir / EXPERT_FILE, expert_csv(frame, truth, _expert_set_ids(rows, seed)))
    atomic_write_bytes(out_dir / "Data_Entry_2017.csv", frame.to_csv(index=False).encode())
    return frame


def _render_all(tasks: list[tuple], workers: int, progress: bool) -> list[tuple[str, str, Box]]:
    """Render and write every image (in `workers` processes, 0 = all cores); all their box rows."""
    workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
    boxes: list[tuple[str, str, Box]] = []
    with progress_bar(total=len(tasks), unit="img", desc="phantom", disable_bar=not progress) as bar:
        if workers == 1:
            for task in tasks:
                boxes += _render_task(task)
                bar.update()
        else:  # tasks are in patient order, so chunks mostly reuse the cached anatomy
            # fork: works from unguarded scripts and starts fast.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            with opencv_single_threaded(), context.Pool(workers, initializer=_keep_freed_heap) as pool:
                chunk = max(1, min(16, len(tasks) // (4 * workers)))
                for image_boxes in pool.imap_unordered(_render_task, tasks, chunksize=chunk):
                    boxes += image_boxes
                    bar.update()
    return boxes


def generate_phantom(
    out_dir: Path,
    n_patients: int,
    image_size: int = 1024,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    missed: float = 0.0,
    spurious: float = 0.0,
) -> pd.DataFrame:
    """Write a phantom data set in the NIH layout and return its metadata.

    Args:
        out_dir: receives `images/<patient:08d>_<followup:03d>.png`, `BBox_List_2017.csv` (NIH's
            format: one box per image and boxed finding, image_size pixels), `expert_labels.csv`
            (the truth of four findings in the released radiologist-label format) and
            `Data_Entry_2017.csv` (written last).
        n_patients: patients, ids 1..n; images ≈ 3.6 x n_patients.
        image_size: side of the square 8-bit grayscale PNGs.
        seed: the only source of randomness; the same seed gives byte-identical files.
        workers: processes (0 = all cores); never changes the output.
        progress: show the project's progress bar.
        missed: probability that a true finding is left out of an image's `Finding Labels`.
        spurious: probability that an absent finding is added to them (0/0: the truth).

    Returns:
        The metadata as written, noisy labels included, with the CSV's columns (width/height and
        spacing x/y are separate columns).
    """
    out_dir = Path(out_dir)
    images, csv_path = out_dir / "images", out_dir / "Data_Entry_2017.csv"
    images.mkdir(parents=True, exist_ok=True)
    csv_path.unlink(missing_ok=True)  # the CSV's presence must keep meaning "complete set"
    rows = [row for pid in range(1, n_patients + 1) for row in _patient_rows(seed, pid, image_size)]
    tasks = [(seed, r[3], r[2], r[1], r[6], image_size, str(images / r[0])) for r in rows]
    boxes = _render_all(tasks, workers, progress)
    atomic_write_text(out_dir / BBOX_FILE, bbox_csv(boxes))  # sorted, so independent of finishing order
    frame = _write_tables(out_dir, rows, seed, missed, spurious)
    prevalence = frame["Finding Labels"].str.get_dummies(sep="|").mean().sort_values(ascending=False)
    log.info(
        "phantom: %d images of %d patients (%d boxes); prevalence %s",
        len(frame),
        n_patients,
        len(boxes),
        ", ".join(f"{name} {100 * p:.1f}%" for name, p in prevalence.items()),
    )
    return frame
