"""Job-accounting ingestion (sacct, files, HTTP) and usage-and-cost analytics."""
