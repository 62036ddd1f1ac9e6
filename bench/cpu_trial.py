"""One research trial (the command every row of reproduction/trials.md was run with): see research/cpu_trial.py.

Example:
  python bench/cpu_trial.py --name=silwarm4k_seed0 --preset=label_free_x10 \
      --overrides='{"loss": {"silhouette_warmup_steps": 4000}}' --results=reproduction/trials.jsonl
--name names the run (--runs_dir/<name>); --preset is the trial base; --overrides is JSON merged into it;
--eval_at lists the steps at which to evaluate besides the last; --results is the JSON-lines log.
"""

from absl import app

from keypointnet_research import cpu_trial

if __name__ == "__main__":
  app.run(cpu_trial.main)
