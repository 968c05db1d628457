"""Studies over many trainings from one cache: ablate (a table of variants), tune (nested Optuna
search), stats (fold-level spreads and paired differences). Their commands live in pipeline/."""
