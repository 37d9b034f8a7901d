# Two entry points: `make run` (main job on the embedded synthetic cohort) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: run test validate validate-shifted report dryrun lint schema clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/local

validate: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/local validate

# The shifted phantom family (never seen in training) through the same validation, into its own results
# folder; compare with `$(BIN)/python benchmarks/family_comparison.py results/validation/summary.parquet
# results/shifted/validation/summary.parquet`.
validate-shifted: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/local validate \
		--configfile config/config.yaml config/shifted.yaml --config results_dir=results/shifted

# A browsable cohort QC report of the last run: every patient's QC figures by stage, the risk plots.
report: $(STAMP)
	$(BIN)/snakemake --workflow-profile workflow/profiles/local --report results/report.zip

dryrun: $(STAMP)
	$(BIN)/snakemake -n --quiet

lint: $(STAMP)
	$(BIN)/snakemake --lint

schema: $(STAMP)
	$(BIN)/python -m ctp_steps schema > config/config.schema.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf results .snakemake
