"""TAP -> catalogue: metadata discovery, keyset paging, completeness proofs, withdrawals."""
