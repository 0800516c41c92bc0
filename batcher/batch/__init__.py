"""Provider Batch APIs (`--mode batch`): the HTTP client (`client`), the Batch API lines
both ways (`lines`) and the run that submits, waits for and collects a job's batches
(`run`). It sits beside the engine: the job folder, parts and assembly are the online ones."""
