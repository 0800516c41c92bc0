"""What results add up to: the one aggregator (`totals`), cost and prices per row (`cost`),
estimates before a job (`estimate`, `tokens`), reports (`report`, `html`), a job's status
(`status`) and its end-of-job summary (`summary`)."""
