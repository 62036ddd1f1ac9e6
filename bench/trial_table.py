"""Markdown rows of the trial log: see research/trial_table.py.

Examples:
  python bench/trial_table.py reproduction/trials.jsonl                              # print the rows
  python bench/trial_table.py reproduction/trials.jsonl reproduction/trials.md       # rewrite the table there
"""

import sys

from keypointnet_research import trial_table

if __name__ == "__main__":
  trial_table.main(sys.argv)
