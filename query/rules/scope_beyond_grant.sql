-- id: scope_beyond_grant
-- title: Privilege used beyond what was granted
-- severity: high
-- owasp_nhi: NHI5
-- description: >
--   A token invoked an operation that the grants files reserve for scopes the token does not
--   carry, or an agent with declared resource grants reached a resource none of them covers.
--   Either the API enforces less than the grants say, or the grants understate what the identity
--   really does (OWASP NHI5, overprivileged NHI). Only operations some scope grant covers, and
--   only agents with resource grants, are judged.
WITH covered AS (
  -- Operations some scope grant covers, with the scopes that cover them, and who invoked them.
  SELECT e.src_id AS credential_fp, e.dst_id AS operation, max(e.last_seen) AS last_seen,
         first_value(e.sample_trace_id ORDER BY e.last_seen DESC) AS trace_id,
         array_agg(DISTINCT g.subject_id) AS scopes_needed
  FROM edges e
  JOIN grants g ON g.subject_kind = 'scope' AND g.target_kind = 'operation'
   AND glob_match(g.target_pattern, e.dst_id)
  WHERE e.relation = 'invoked'
  GROUP BY e.src_id, e.dst_id),
carried AS (
  -- The scopes of those tokens only (a token's scopes are the same on every span); none at all
  -- is the plainest case of "beyond".
  SELECT credential_fp, first_value(token_scopes) AS scopes
  FROM spans
  WHERE credential_kind = 'jwt' AND credential_fp IN (SELECT credential_fp FROM covered)
  GROUP BY credential_fp),
agent_effects AS (
  SELECT agents[-1] AS agent,
         concat(effect_kind, ':', effect_target) AS resource,
         time, trace_id, effect_span_id
  FROM chains_latest
  WHERE cardinality(agents) > 0 AND effect_target IS NOT NULL),
agent_grants AS (
  SELECT subject_id AS agent, target_pattern
  FROM grants WHERE subject_kind = 'agent' AND target_kind = 'resource')
SELECT v.last_seen AS time,
       'credential' AS subject_kind,
       v.credential_fp AS subject_id,
       concat('invoked ', v.operation, ', which needs ',
              array_to_string(array_sort(v.scopes_needed), ' or '),
              '; the token carries ', coalesce(nullif(array_to_string(c.scopes, ' '), ''),
                                               'no scope')) AS detail,
       v.trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM covered v
JOIN carried c ON c.credential_fp = v.credential_fp
WHERE cardinality(array_intersect(coalesce(c.scopes, make_array('')), v.scopes_needed)) = 0
UNION ALL
SELECT max(a.time) AS time,
       'agent' AS subject_kind,
       a.agent AS subject_id,
       concat('reached ', a.resource, ', outside its grants (',
              array_to_string(first_value(patterns), ', '), ')') AS detail,
       first_value(a.trace_id ORDER BY a.time DESC) AS trace_id,
       first_value(a.effect_span_id ORDER BY a.time DESC) AS span_id
FROM agent_effects a
JOIN (SELECT agent, array_sort(array_agg(target_pattern)) AS patterns
      FROM agent_grants GROUP BY agent) p ON p.agent = a.agent
WHERE NOT EXISTS (
  SELECT 1 FROM agent_grants g
  WHERE g.agent = a.agent AND glob_match(g.target_pattern, a.resource))
GROUP BY a.agent, a.resource
