-- User commands only; nothing starts until require("exlsp").setup() is called.
if vim.g.loaded_exlsp then
  return
end
vim.g.loaded_exlsp = true

vim.api.nvim_create_user_command("ExlspChat", function(args)
  local exlsp = require("exlsp")
  local bufnr = vim.api.nvim_get_current_buf()
  local lines = args.range > 0 and { args.line1, args.line2 } or nil
  local function send(message)
    if message and message ~= "" then
      exlsp.chat(message, bufnr, lines)
    end
  end
  if args.args ~= "" then
    send(args.args)
  else
    vim.ui.input({ prompt = "exlsp chat: " }, send)
  end
end, { nargs = "*", range = true, desc = "Ask the exlsp model (about the selected lines)" })

vim.api.nvim_create_user_command("ExlspStatus", function()
  require("exlsp").status()
end, { desc = "Show the exlsp server status" })

vim.api.nvim_create_user_command("ExlspToggle", function()
  require("exlsp").toggle()
end, { desc = "Turn exlsp inline suggestions on or off" })
