"""The serverless variant: Tally's queries run by an Azure Functions app
(``deploy/azure-functions/function_app.py``) instead of a coordinator and workers.

An uploaded blob (an Event Grid-based blob trigger, or the Event Grid event taken from a
storage queue) is cut into line-aligned ranges, one queue message each; a queue-triggered map
computes a range's partial with Tally's own kernels and writes it to a blob; the map that
finds every partial present and wins a conditional create of the claim blob merges them and
writes the result. :mod:`tally.functions.flow` holds the decisions (pure), and
:mod:`tally.functions.handlers` the storage calls around them.
"""
