-- id: delegation_too_deep
-- title: Delegation chain deeper than three agents
-- severity: medium
-- owasp_nhi: NHI5
-- per: chain
-- description: >
--   A side effect was reached through more than three nested agents (or a token's act chain of
--   more than three actors). Every hop inherits what the one above could do, so deep delegation
--   hands broad privilege to identities far from the person who asked, and makes the chain hard
--   to review (OWASP NHI5). Copy this rule with another threshold if three does not suit you.
SELECT time,
       'agent' AS subject_kind,
       coalesce(agents[-1], token_actors[1]) AS subject_id,
       concat(effect_operation, ' ', effect_target, ' through ',
              greatest(cardinality(agents), cardinality(token_actors)), ' levels: ',
              array_to_string(agents, ' > ')) AS detail,
       trace_id,
       effect_span_id AS span_id
FROM chains_latest
WHERE greatest(cardinality(agents), cardinality(token_actors)) > 3
