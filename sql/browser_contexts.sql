-- Every context's token ids, in ctx_id order.
SELECT ctx_id, tokens FROM contexts ORDER BY ctx_id
