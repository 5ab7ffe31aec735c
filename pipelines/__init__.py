"""Ray glue around the s2cnet library: the S3 -> Ray Data -> Parquet batch job and its local S3 store."""
