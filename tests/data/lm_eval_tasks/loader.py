"""The example lm-evaluation-harness task's items: safeneuron_everyday.jsonl beside this file.

Referenced from safeneuron_everyday.yaml as ``custom_dataset: !function loader.load``, so the task finds its
data wherever it is run from (a ``dataset_kwargs: {data_files: ...}`` path would be relative to the working
directory). Written by the project; no dataset text is copied.
"""

import json
from pathlib import Path


def load(**_metadata):
    import datasets

    path = Path(__file__).with_name("safeneuron_everyday.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
