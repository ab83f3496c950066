// generateObject in JSON mode with a provider without structured outputs: the AI SDK
// writes the schema into the system message and asks for response_format json_object.
// Prints the object it returns (or its error) as one JSON line.
import { generateObject } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const provider = createOpenAICompatible({
  name: "picolm",
  baseURL: process.env.PICOLM_BASE_URL,
  apiKey: "unused",
});
try {
  const { object } = await generateObject({
    model: provider(process.env.PICOLM_MODEL),
    mode: "json",
    schema: z.object({ name: z.string(), country: z.string(), population: z.number().int() }),
    temperature: 0,
    maxRetries: 0,
    prompt: process.env.PICOLM_PROMPT,
  });
  console.log(JSON.stringify({ object }));
} catch (error) {
  console.log(JSON.stringify({ error: `${error.name}: ${error.message}` }));
  process.exitCode = 1;
}
