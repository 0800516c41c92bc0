"""Files in and out: input readers (`inputs`), rows to requests (`templates`, `rows`), the
checking pass (`check`), the job folder (`jobdir`, its one owner), the request `spool`,
resume (`resume`), the output's columns (`columns`) and its assembly (`assemble`)."""
