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
WITH invoked AS (
  SELECT src_id AS credential_fp, dst_id AS operation, max(last_seen) AS last_seen,
         first_value(sample_trace_id ORDER BY last_seen DESC) AS trace_id
  FROM edges WHERE relation = 'invoked'
  GROUP BY src_id, dst_id),
carried AS (
  -- Every token, with the scopes it carried (none at all is the plainest case of "beyond").
  SELECT credential_fp,
         array_distinct(flatten(array_agg(token_scopes) FILTER (WHERE token_scopes IS NOT NULL)))
           AS scopes
  FROM spans
  WHERE credential_fp IS NOT NULL AND credential_kind = 'jwt'
  GROUP BY credential_fp),
needed AS (
  SELECT i.credential_fp, i.operation, i.last_seen, i.trace_id, g.subject_id AS scope, c.scopes
  FROM invoked i
  JOIN carried c ON c.credential_fp = i.credential_fp
  JOIN grants g ON g.subject_kind = 'scope' AND g.target_kind = 'operation'
   AND glob_match(g.target_pattern, i.operation)),
agent_effects AS (
  SELECT agents[-1] AS agent,
         concat(effect_kind, ':', effect_target) AS resource,
         time, trace_id, effect_span_id
  FROM chains_latest
  WHERE cardinality(agents) > 0 AND effect_target IS NOT NULL),
agent_grants AS (
  SELECT subject_id AS agent, target_pattern
  FROM grants WHERE subject_kind = 'agent' AND target_kind = 'resource')
SELECT max(last_seen) AS time,
       'credential' AS subject_kind,
       credential_fp AS subject_id,
       concat('invoked ', operation, ', which needs ',
              array_to_string(array_sort(array_agg(DISTINCT scope)), ' or '),
              '; the token carries ', coalesce(nullif(array_to_string(first_value(scopes), ' '), ''),
                                               'no scope')) AS detail,
       first_value(trace_id ORDER BY last_seen DESC) AS trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM needed
GROUP BY credential_fp, operation
HAVING NOT coalesce(bool_or(array_has(scopes, scope)), false)
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
