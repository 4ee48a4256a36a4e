"""The Markdown page of tools/bench_gpu.py's figures (bench_gpu.md), written from its JSON after every figure.
Rows carry `planned_gib` / `planned_step_s` once the planner's predictions are set beside them."""

from __future__ import annotations


def fmt(value, digits: int = 3) -> str:
    """A table cell: numbers rounded, booleans as yes/no, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    """A Markdown table of `rows` with (key, header) `columns`."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("OOM" if row.get("oom") and key == "step_s" else fmt(row.get(key))
                                for key, _ in columns) + " |" for row in rows]
    return lines


def with_mfu(rows: list[dict], peak_tflops: float | None) -> list[dict]:
    """Rows with model FLOPs utilisation (achieved over the device's peak dense bf16 rate) where both are known."""
    return [row | ({"mfu": row["tflops"] / peak_tflops} if peak_tflops and "tflops" in row else {}) for row in rows]


STEP_COLUMNS = [("step_s", "s / step"), ("planned_step_s", "planned s"), ("img_per_s", "img/s"),
                ("peak_gib", "peak GiB"), ("planned_gib", "planned GiB"), ("tflops", "TFLOP/s"), ("mfu", "MFU")]


def markdown(data: dict) -> str:
    """The whole page: environment, attention dispatch, the step matrix, the levers, predict and the fit."""
    env = data.get("environment", {})
    net = data.get("network", {})
    peak = env.get("peak_bf16_tflops")
    lines = [f"# Device check: `{env.get('preset')}` training step", "",
             f"**Device.** {env.get('device')}; torch {env.get('torch')}, timm {env.get('timm')}, "
             f"lightning {env.get('lightning')}. **Date.** {env.get('date')}. **Commit.** {env.get('commit')}.",
             f"**Command.** `python tools/bench_gpu.py {' '.join(env.get('argv', []))}`", "",
             f"Network: {net.get('params', 0) / 1e6:.1f} M parameters, input {net.get('input')}². "
             f"FLOPs of a training step (forward + backward) per image: {fmt(data.get('flops_per_sample', 0) / 1e12)} "
             f"TFLOP (torch's FlopCounterMode); MFU against {fmt(peak)} TFLOP/s (datasheet dense bf16).", ""]
    attention = data.get("attention", {})
    lines += [f"Attention: timm's fused path (`fused_attn`) {attention.get('timm_fused_attn')}; ops and kernels "
              f"the profiler saw: {', '.join(attention.get('attention_ops_and_kernels', [])) or '-'}.", "",
              "## Training step (forward, float32 loss, backward, clip, AdamW fused)", ""]
    lines += table(with_mfu(data.get("steps", []), peak),
                   [("precision", "precision"), ("ckpt", "act. ckpt"), ("compile", "compile"), ("batch", "batch / GPU")] + STEP_COLUMNS)
    lines += ["", "## Levers (bf16-mixed on a GPU, 32-true on CPU; act. ckpt; one change each against the reference)", ""]
    lines += table(with_mfu(data.get("levers", []), peak),
                   [("lever", "lever"), ("batch", "batch / GPU"), ("first_step_s", "first step s")] + STEP_COLUMNS)
    lines += ["", "## Predict (one image, network forward)", ""]
    lines += table(data.get("predict", []), [("precision", "precision"), ("step_s", "s / image"),
                                             ("peak_gib", "peak GiB")])
    fit = data.get("fit")
    if fit:
        losses = fit.get("losses", [])
        lines += ["", "## Fit smoke", "", f"`python {fit.get('command')}`: exit {fit.get('returncode')}, "
                  f"{fit.get('steps_logged')} steps logged in {fmt(fit.get('fit_s'))} s (process start included); "
                  f"loss finite: {fmt(fit.get('finite'))}, falls: {fmt(fit.get('falls'))} "
                  f"(first {fmt(losses[0] if losses else None)}, last {fmt(losses[-1] if losses else None)})."]
        lines += [f"    {line}" for line in fit.get("error_tail", [])]
    lines += ["", *[f"- {note}" for note in data.get("notes", [])]]
    return "\n".join(lines) + "\n"
