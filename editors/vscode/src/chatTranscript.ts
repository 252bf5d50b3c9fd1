// The text of the chat document: questions and answers as Markdown, the answer growing with each
// streamed piece and replaced by the server's whole answer at the end. Pure.

export class ChatTranscript {
  private readonly done: string[] = [];
  private question = "";
  private answer = "";
  private open = false;

  /** Starts a new exchange. */
  ask(message: string): void {
    this.close();
    this.question = message;
    this.answer = "";
    this.open = true;
  }

  /** A streamed piece of the answer ($/progress report message). */
  append(piece: string): void {
    if (this.open) {
      this.answer += piece;
    }
  }

  /** The whole answer (the command's result) replaces what was streamed. */
  finish(answer: string | undefined, error?: string): void {
    if (!this.open) {
      return;
    }
    if (answer !== undefined) {
      this.answer = answer;
    }
    if (error) {
      this.answer += `${this.answer ? "\n\n" : ""}**error:** ${error}`;
    }
    this.close();
  }

  get busy(): boolean {
    return this.open;
  }

  get text(): string {
    const parts = [...this.done];
    if (this.open) {
      parts.push(ChatTranscript.format(this.question, this.answer + " ▍"));
    }
    return parts.join("\n\n");
  }

  private close(): void {
    if (this.open) {
      this.done.push(ChatTranscript.format(this.question, this.answer));
      this.open = false;
    }
  }

  private static format(question: string, answer: string): string {
    return `## You\n\n${question}\n\n## exlsp\n\n${answer}`;
  }
}
