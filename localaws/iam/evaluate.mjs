// Evaluates AWS IAM authorisation requests with @cloud-copilot/iam-simulate: the policy engine
// of the enforced-IAM tests (embatch_localaws::iam). A test tool run as a separate process
// (the package is AGPL-3.0-or-later); nothing of it is shipped or linked.
//
// Protocol: one JSON object per line on stdin, one answer per line on stdout, in order.
//   request: {"principal": ARN, "identityPolicies": [{"name", "policy"}],
//             "resourcePolicy": policy | null, "action": "s3:GetObject",
//             "resource": ARN, "accountId": "123456789012", "context": {key: value | [values]}}
//   answer:  {"decision": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied"}
//            or {"error": "..."} when the simulator refuses the input (an unknown action, a
//            resource of the wrong type, a malformed policy): the test treats that as a failure.
import { createInterface } from 'node:readline'
import { runSimulation } from '@cloud-copilot/iam-simulate'

async function evaluate(request) {
  const simulation = {
    identityPolicies: request.identityPolicies,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    request: {
      action: request.action,
      principal: request.principal,
      resource: { accountId: request.accountId, resource: request.resource },
      contextVariables: request.context ?? {},
    },
  }
  if (request.resourcePolicy) simulation.resourcePolicy = request.resourcePolicy
  const result = await runSimulation(simulation, {})
  if (result.resultType === 'error') return { error: JSON.stringify(result.errors) }
  return { decision: result.overallResult }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let answer
  try {
    answer = await evaluate(JSON.parse(line))
  } catch (e) {
    answer = { error: String(e && e.stack ? e.stack : e) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
