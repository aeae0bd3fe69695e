"""Markdown tables from benchmark JSON (experiments/bench_report.py; the tables in
docs/results.md are made by it)."""

from __future__ import annotations


def _f(x, fmt="{:.1f}"):
  return "–" if x is None else fmt.format(x)


def config_table(res: dict) -> str:
  m = res["machine"]
  lines = [
    f"`{res['command']}` on {m['device_kind']} ({m['platform']}, {m['cpu_count']} CPUs, jax {m['jax']}"
    f"{', torch ' + m['torch'] if m.get('torch') else ''}); dense 2048² matmul: "
    f"{_f(m.get('gemm_2048_flops') and m['gemm_2048_flops'] / 1e9, '{:.0f}')} GFLOP/s.",
    "",
    "| learner | B | K | adapt | chunk | step ms (p10–p90) | tasks/s | compile s | GFLOP/step | GFLOP/s "
    "| % of matmul ceiling | vs torch loop | vs JAX loop | compiles |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for c in res["configs"]:
    st = c["step"]
    share = c.get("share_of_gemm_ceiling")
    lines.append(
      f"| {c['learner']} | {c['meta_batch_size']} | {_f(c['inner_steps'], '{}')} | {c['adapt'] or '–'} "
      f"| {c.get('task_chunk', 0)} | {st['median_s'] * 1e3:.2f} ({st['p10_s'] * 1e3:.2f}–{st['p90_s'] * 1e3:.2f}) "
      f"| {c['tasks_per_s']:.0f} | {c['compile_s']:.1f} "
      f"| {_f(c['flops_per_step'] and c['flops_per_step'] / 1e9, '{:.2f}')} "
      f"| {_f(c['achieved_flops'] and c['achieved_flops'] / 1e9, '{:.0f}')} "
      f"| {_f(share and 100 * share, '{:.0f}')} "
      f"| {_f(c.get('speedup_vs_torch_loop'), '{:.1f}×')} | {_f(c.get('speedup_vs_jax_loop'), '{:.1f}×')} "
      f"| {c['compiles']} |"
    )
  return "\n".join(lines)


def scaling_table(res: dict) -> str:
  cells, batches = {}, []
  for c in res["configs"]:
    key = (c["learner"], c["inner_steps"])
    cells.setdefault(key, {})[c["meta_batch_size"]] = c["tasks_per_s"]
    if c["meta_batch_size"] not in batches:
      batches.append(c["meta_batch_size"])
  batches.sort()
  lines = ["| learner | K | " + " | ".join(f"B={b}" for b in batches) + " |", "|---|---|" + "---|" * len(batches)]
  first_seen = {name: i for i, (name, _) in reversed(list(enumerate(cells)))}
  for (name, k), row in sorted(cells.items(), key=lambda kv: (first_seen[kv[0][0]], kv[0][1] or 0)):
    lines.append(f"| {name} | {_f(k, '{}')} | " + " | ".join(_f(row.get(b), "{:.0f}") for b in batches) + " |")
  return "\n".join(lines)


def growth_table(res: dict) -> str:
  lines = [
    "| users | ratings | train tasks | generate s | episodes s | epoch s (tasks/s) | peak RSS after generate / "
    "episodes / epoch (GB) |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in res["growth"]:
    e = r["epoch"]
    lines.append(
      f"| {r['n_users']:,} | {r['n_ratings']:,} | {r['n_train_tasks']:,} | {r['generate']['s']:.1f} "
      f"| {r['episodes']['s']:.1f} | {e['s']:.1f} ({e['tasks_per_s']:.0f}) "
      f"| {r['generate']['peak_host_mb'] / 1024:.2f} / {r['episodes']['peak_host_mb'] / 1024:.2f} / "
      f"{e['peak_host_mb'] / 1024:.2f} |"
    )
  return "\n".join(lines)
