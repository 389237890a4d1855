"""`chatforge label`: people rank the SFT model's answers in a web app, and their labels train the reward model.

    tasks.py      the samples file (K answers per prompt) read and validated as labelling tasks
    store.py      SQLite in the run folder: annotators, tasks, leases, and an append-only log of labels
    validate.py   a submitted label checked against its task (order, ratings, flags)
    api.py        the JSON API and the page (web/index.html), FastAPI
    agreement.py  Kendall's tau-b and Krippendorff's alpha; stats.py the dashboard's numbers
    merge.py      several annotators' orders of one task merged into one (Borda count)
    export.py     labels -> rankings in the format of docs/rankings.md
    simulate.py   the gold judge as annotators with a set error rate; ai.py an LLM as annotator
    cli.py        the `label` subcommand

docs/labelling.md describes the whole, the API included.
"""
