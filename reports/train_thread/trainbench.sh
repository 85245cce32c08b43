#!/bin/bash
# usage: trainbench.sh SRC TAG
SRC=$1; TAG=$2
cd /tmp
export RECCHAT_DATA_DIR=/tmp/rc/data HF_HUB_OFFLINE=1 PYTHONPATH=$SRC
D=/work/shared/datasets/redial/partial_train
rm -rf /tmp/tr_$TAG
start=$(date +%s.%N)
/work/main/.venv/bin/python -m chatbot train --steps 10 --batch 4 --out /tmp/tr_$TAG --dialogs $D/kepler_subset_train_data.jsonl --heldout-dialogs $D/kepler_subset_valid_data.jsonl --catalog movies --heldout-turns 120 --no-compare-base --no-justifications --no-progress > /tmp/tr_$TAG.out 2> /tmp/tr_$TAG.err
end=$(date +%s.%N)
echo "$TAG total $(echo "$end - $start" | bc) s; training $(python3 -c "import json;print(json.load(open('/tmp/tr_$TAG.out'))['training'])")"
