"""The report sections a reviewer of an architecture comparison asks for.

    lines = seed_lines(ranked)                         # is the ranking bigger than seed noise?
    lines += subgroup_lines(ranked, subgroups)         # does it work equally for everyone?
    lines += expert_lines(ranked, expert_summary)      # does it agree with radiologists?
    lines += calibration_lines(ranked)                 # can I trust a probability of 0.3?
    lines += published_lines(split_method)             # where do published numbers sit?

Every number is read from evaluate@'s records (metrics/details/<model>.json, whose `seeds`,
`metrics.expert` and `metrics.temperature_scaling` it wrote) and metrics/subgroups/<model>.json;
nothing is recomputed here. Undefined values print as "–", too-small groups as "too small".
"""

from __future__ import annotations

from cxr14.labels import EXPERT_FINDINGS, LABELS, NIH_COMPONENTS

DIMENSION_NAMES = {"sex": "sex", "age": "age (years)", "view": "view", "follow_up": "first image / follow-up"}


def fmt(value: float | None, digits: int = 3) -> str:
    """A table cell: the value to `digits` decimals, "–" when undefined (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _ci(interval: list[float] | tuple[float, float] | None, digits: int = 3, sign: bool = False) -> str:
    if not interval:
        return ""
    form = f"+.{digits}f" if sign else f".{digits}f"
    return f" [{interval[0]:{form}}, {interval[1]:{form}}]"


def seed_lines(ranked: list[dict]) -> list[str]:
    """Per model: every training seed's test macro AUROC, their mean, spread and the interval of the mean."""
    with_seeds = [record for record in ranked if record.get("seeds")]
    if not with_seeds:
        return []
    lines = [
        "",
        "## Training seeds",
        "",
        "Each model trained once per seed of `train_seeds` (initialisation, augmentation and batch order; the data "
        "seed, which drew the split, is the same for all). SD: sample standard deviation across seeds (needs two); "
        "95 % CI: patient bootstrap of the mean over seeds. When two models differ by less than the seeds' spread, "
        "the ranking between them is not established.",
        "",
        "| model | seeds | macro AUROC per seed | mean | SD | range | 95 % CI of the mean |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for record in with_seeds:
        seeds = record["seeds"]
        per_seed = ", ".join(f"{seed}: {fmt(value)}" for seed, value in zip(seeds["seeds"], seeds["macro_auroc"]))
        lines.append(
            f"| `{record['model']}` | {len(seeds['seeds'])} | {per_seed} | {fmt(seeds['mean'])} | "
            f"{fmt(seeds['sd'])} | {fmt(seeds['min'])}–{fmt(seeds['max'])} | {_ci(seeds['ci']).strip()} |"
        )
    return lines


def _group_cell(entry: dict, key: str) -> str:
    """A group's value and interval, or "too small (n patients)"."""
    if entry.get("too_small"):
        return f"too small ({entry.get('patients', entry.get('patients_with_finding'))} pts)"
    if key == "underdiagnosis":
        under = entry.get("underdiagnosis") or {}
        if under.get("too_small"):  # counted among the patients with a finding, whom the rate is about
            return f"too small ({under.get('patients_with_finding')} pts with a finding)"
        return f"{fmt(under.get('rate'))}{_ci(under.get('ci'))}"
    classes = entry.get("classes_in_macro_auroc")
    fewer = f" ({classes} classes)" if classes is not None and classes < len(LABELS) else ""  # the rest: no positive
    return f"{fmt(entry.get('macro_auroc'))}{_ci(entry.get('macro_auroc_ci'))}{fewer}"


def _group_table(ranked: list[dict], subgroups: dict[str, dict], key: str) -> list[str]:
    """One row per (dimension, group), one column per model."""
    first = subgroups[ranked[0]["model"]]
    lines = [
        "| group | " + " | ".join(f"`{record['model']}`" for record in ranked) + " |",
        "|---|" + "---:|" * len(ranked),
    ]
    for dimension, block in first["dimensions"].items():
        for group, entry in block["groups"].items():
            cells = [
                _group_cell(subgroups[record["model"]]["dimensions"][dimension]["groups"][group], key)
                for record in ranked
            ]
            lines.append(
                f"| {DIMENSION_NAMES[dimension]}: {group} ({entry['images']} img / {entry['patients']} pts) | "
                + " | ".join(cells)
                + " |"
            )
    return lines


# Two-group dimensions: the gap of the second group is the first's with the sign flipped; shown once.
MIRRORED_GROUPS = {"sex": "M", "view": "PA", "follow_up": "first"}


def _found_gaps(report: dict) -> list[str]:
    """Rows of every TPR/FPR gap whose interval excludes 0, for one model (two-group dimensions once)."""
    rows = []
    for dimension, block in report["dimensions"].items():
        # "F − M" rather than "F − the other group"; age: "− median over the scored age groups".
        reference = MIRRORED_GROUPS.get(dimension) or block.get("gap_reference") or "other group"
        for group, by_label in block["gaps"].items():
            if MIRRORED_GROUPS.get(dimension) == group:
                continue
            for label, rates in by_label.items():
                for rate, gap in rates.items():
                    if gap.get("excludes_zero"):
                        rows.append(
                            f"| {DIMENSION_NAMES[dimension]} | {group} − {reference} | {label} | {rate.upper()} | "
                            f"{gap['gap']:+.3f}{_ci(gap['ci'], sign=True)} |"
                        )
    return rows


def subgroup_lines(ranked: list[dict], subgroups: dict[str, dict]) -> list[str]:
    """Macro AUROC and under-diagnosis per subgroup (all models), the gaps found and the sex x age
    under-diagnosis of the best model."""
    if not subgroups or not ranked:
        return []
    best = ranked[0]["model"]
    report = subgroups[best]
    first = next(iter(report["dimensions"].values()))
    unknown = ", ".join(
        f"{DIMENSION_NAMES[dim]} {block['unknown_images']}"
        for dim, block in report["dimensions"].items()
        if block["unknown_images"]
    )
    lines = [
        "",
        "## Subgroups",
        "",
        f"Test split by sex, age, view and first image vs follow-up (`metrics/subgroups/<model>.json`, first "
        f"training seed). Groups with fewer than {report['min_patients']} patients are too small to report. "
        f"Intervals: {report['resamples']} patient-bootstrap resamples. Images whose attribute is unknown "
        f"are counted, not grouped{f' ({unknown})' if unknown else ' (none here)'}; "
        f"{first['other_images']} image(s) of other views. A group's macro AUROC averages the classes with a "
        f"positive in the group: all {len(LABELS)} unless the cell says fewer.",
        "",
        "### Macro AUROC per group",
        "",
        *_group_table(ranked, subgroups, "macro_auroc"),
        "",
        "### Under-diagnosis per group",
        "",
        'Share of test images with at least one finding that the model calls "No Finding" at the validation-'
        "chosen (max-F1) threshold (Seyyed-Kalantari et al. 2021).",
        "",
        *_group_table(ranked, subgroups, "underdiagnosis"),
    ]
    return lines + _gap_lines(best, report) + _sex_age_lines(best, report)


def _gap_lines(best: str, report: dict) -> list[str]:
    found = _found_gaps(report)
    lines = [
        "",
        f"### Gaps found (`{best}`)",
        "",
        "True- and false-positive-rate gaps per finding at the max-F1 thresholds: F − M, AP − PA, follow-up − first "
        "image; age: group − median over the age groups. Only rates from at least "
        f"{report.get('min_cases', 1)} positives (TPR) or negatives (FPR) in the group enter a gap. Listed where the "
        "95 % interval excludes 0; all gaps are in the JSON file.",
        "",
    ]
    if not found:
        return [
            *lines,
            "No gap's interval excludes 0: this test set shows no subgroup gap it can distinguish from noise.",
        ]
    return [*lines, "| dimension | gap | finding | rate | gap [95 % CI] |", "|---|---|---|---|---:|", *found]


def _sex_age_lines(best: str, report: dict) -> list[str]:
    cells = report["underdiagnosis_sex_age"]
    bins = list(report["age_bins"])
    lines = [
        "",
        f"### Under-diagnosis by sex × age (`{best}`)",
        "",
        "| sex | " + " | ".join(bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    for sex, by_age in cells.items():
        lines.append(
            f"| {sex} | "
            + " | ".join(_group_cell({"underdiagnosis": by_age[b]}, "underdiagnosis") for b in bins)
            + " |"
        )
    return lines


def expert_lines(ranked: list[dict], expert_summary: dict | None, phantom: bool = False) -> list[str]:
    """Every model's AUROC against the reference labels beside its AUROC against the data set's own
    labels, same images: radiologists vs NIH's report-mined labels, or on the phantom its noiseless
    truth vs its metadata labels with simulated report noise."""
    scored = [record for record in ranked if record["metrics"].get("expert")]
    if not scored:
        return []
    summary = expert_summary or {}
    mapping = "; ".join(
        f"{finding} ← {' / '.join(NIH_COMPONENTS[finding]) or 'no NIH class'}" for finding in EXPERT_FINDINGS
    )
    first = scored[0]["metrics"]["expert"]
    counted = f"{first['images']} test images ({first['patients']} patients)"
    if phantom:
        heading, reference, own = "Against reference labels (the phantom's truth)", "reference", "metadata labels"
        opening = (
            f"Reference labels: the phantom's noiseless labels of {counted}, standing in for radiologist-adjudicated "
            "labels (as Majkowska et al., Radiology 2020, provide for NIH); the metadata labels beside them carry "
            "simulated report-style noise (`data.phantom.label_noise`)"
        )
    else:
        heading, reference, own = "Against radiologists", "radiologists", "NIH labels"
        opening = f"Radiologist-adjudicated labels (Majkowska et al., Radiology 2020) of {counted}"
    lines = [
        "",
        f"## {heading}",
        "",
        opening
        + (
            f"; {summary['outside_test_split_ignored']} labelled images outside this test split were ignored"
            if summary.get("outside_test_split_ignored") is not None
            else ""
        )
        + f". NIH classes per expert finding (max over them, for labels and scores): {mapping}. Both AUROCs are "
        "on the same images, with patient-bootstrap 95 % intervals (first training seed). A difference whose "
        f"interval excludes 0 means the noise of the {own} moves the measured AUROC; one whose interval contains 0 "
        "cannot tell.",
        "",
        f"| model | finding | {reference} positives | {own} positives | AUROC vs {reference} | AUROC vs {own} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for record in scored:
        mean = record["metrics"]["expert"].get("mean") or {}
        if mean.get("difference") is not None:
            lines.append(
                f"| `{record['model']}` | **mean of {len(mean['findings'])}** | | | **{fmt(mean['auroc_expert'])}** | "
                f"**{fmt(mean['auroc_nih'])}** (difference {mean['difference']:+.3f}"
                f"{_ci(mean['difference_ci'], sign=True)}) |"
            )
        for finding, row in record["metrics"]["expert"]["findings"].items():
            if row.get("nih_class") is None:
                versus = "no NIH class, no model output"
                lines.append(f"| `{record['model']}` | {finding} | {row['expert_positives']} | – | {versus} | – |")
                continue
            lines.append(
                f"| `{record['model']}` | {finding} | {row['expert_positives']} | {row['nih_positives']} | "
                f"{fmt(row['auroc_expert'])}{_ci(row['auroc_expert_ci'])} | "
                f"{fmt(row['auroc_nih'])}{_ci(row['auroc_nih_ci'])} |"
            )
    return lines


def calibration_lines(ranked: list[dict]) -> list[str]:
    """Brier, ECE and validation NLL before and after temperature scaling, per model."""
    scaled = [record for record in ranked if record["metrics"].get("temperature_scaling")]
    if not scaled:
        return []
    lines = [
        "",
        "## Calibration",
        "",
        "Temperature scaling: one temperature per finding fitted on validation (binary NLL), applied to the test "
        "scores; it never changes a ranking, so AUROC is unchanged. Macro over the 15 outputs; ECE with "
        f"{scaled[0]['metrics']['temperature_scaling']['bins']} equal-width bins. The calibrated test scores are "
        "the `calibrated_*` columns of `metrics/predictions/<model>.csv`; the reliability diagrams are among each "
        "model's figures.",
        "",
        "| model | Brier before | Brier after | macro ECE before | macro ECE after | val NLL before | val NLL after | "
        "temperatures (min–max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in scaled:
        scaling = record["metrics"]["temperature_scaling"]
        before, after = scaling["before"], scaling["after"]
        temperatures = [scaling["temperatures"][name] for name in LABELS]
        lines.append(
            f"| `{record['model']}` | {fmt(before['macro_brier'], 4)} | {fmt(after['macro_brier'], 4)} | "
            f"{fmt(before['macro_ece'], 4)} | {fmt(after['macro_ece'], 4)} | {fmt(before['macro_val_nll'], 4)} | "
            f"{fmt(after['macro_val_nll'], 4)} | {min(temperatures):.2f}–{max(temperatures):.2f} |"
        )
    return lines + ["", _calibration_verdict(scaled)]


def _calibration_verdict(scaled: list[dict]) -> str:
    """Whether the validation fit carried over to the test split: counted, not assumed."""
    scalings = [record["metrics"]["temperature_scaling"] for record in scaled]

    def improved(key: str) -> str:
        pairs = [(s["before"].get(key), s["after"].get(key)) for s in scalings]
        defined = [(before, after) for before, after in pairs if fmt(before) != "–" and fmt(after) != "–"]
        return f"{sum(after < before for before, after in defined)} of {len(defined)}"

    return (
        "Validation NLL falls by construction (the temperatures are fitted to it). On the test split, scaling "
        f"lowered macro ECE for {improved('macro_ece')} models and Brier for {improved('macro_brier')}; where it "
        "did not, the uncalibrated test scores are the better-calibrated ones."
    )


# Published mean AUROCs on NIH ChestX-ray14, for orientation: none is a like-for-like comparison.
PUBLISHED_OFFICIAL = [
    ("DenseNet-121, ImageNet-initialised (medical_mae: Xiao et al., WACV 2023)", 0.822),
    ("ViT-B/16, ImageNet-initialised (medical_mae: Xiao et al., WACV 2023)", 0.830),
    ("ViT-B/16, EVA-X pre-training (Yao et al., 2024)", 0.835),
]
PUBLISHED_RANDOM = [("DenseNet-121, CheXNet (Rajpurkar et al., 2017), 14 findings", 0.841)]


def published_lines(split_method: str | None, phantom: bool) -> list[str]:
    """Published numbers for the split in use, labelled as references, never as results; none on
    the phantom, whose numbers compare with nothing published."""
    if phantom:
        return []
    official = split_method == "official"
    rows = PUBLISHED_OFFICIAL if official else PUBLISHED_RANDOM
    caveat = (
        "On NIH's official test list, as here. Both papers choose their checkpoint on the test set (no separate "
        "validation-only selection, unlike this pipeline) and average the 14 findings without No Finding, so "
        "their numbers are optimistic references."
        if official
        else "CheXNet used a random patient split of its own that was never released, and averaged the 14 findings "
        "without No Finding: a reference for orientation, not a comparable result."
    )
    lines = [
        "",
        "## Published references (not results)",
        "",
        caveat,
        "",
        "| model and source | mean AUROC |",
        "|---|---:|",
    ]
    return lines + [f"| {name} | {value:.3f} |" for name, value in rows]
