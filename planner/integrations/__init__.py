"""Where budgetplan meets training frameworks (Lightning, torch.distributed): the pipeline's last room,
above everything else of the library; the CLI does not import it."""
